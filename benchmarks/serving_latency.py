"""Serving latency: the exported SavedModel's signatures, loaded in a fresh process.

Two exports of the default model (embedding 32, towers [64], retrieval +
rating + like): MovieLens 100K (1,682 movies; trained one epoch, since
latency does not depend on the weights' values) and a synthetic catalogue
of 1,000,000 items (ids only, untrained). Each is loaded by a fresh Python
that never imports tfmtl, as TF Serving would load it, and each signature
is called at batch 1 and 256 after 20 warm-up calls:

- `retrieve`: top 100 over the whole catalogue, 20 excluded items per user;
- `rank`: 100 candidates per user;
- `recommend`: retrieve 100 (20 excluded), rank them, top 10.

Rows: signature x batch x catalogue, with `p50_ms`, `p99_ms` (over 200
calls at batch 1, 30 at batch 256) and the process's peak RSS after all of
them (`peak_rss_gb`).

    python benchmarks/serving_latency.py                      # brute force
    python benchmarks/serving_latency.py --index partitioned  # k-means partitions
    python benchmarks/serving_latency.py --index scann        # in the scann extra's env

Writes benchmarks/results/serving_latency.json, or serving_latency_<index>.json
whose `retrieve` rows also hold `recall_at_100`: the share of the exact
(brute-force) top 100 that the approximate index returns, over 256 users
without exclusions, and `build_s`, the export's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import training
from tfmtl.model import build_model
from tfmtl.config import ExperimentConfig
from tfmtl.data import InteractionData
from tfmtl.features import FeatureVocabulary
from tfmtl.serving import export_model

from common import write_record

SYNTHETIC_ITEMS = 1_000_000

# Run by a fresh interpreter: argv = export folder, a JSON file of input values, index.
_MEASURE = r"""
import json, resource, sys, time
import numpy as np
import tensorflow as tf
export, sample = sys.argv[1], json.loads(open(sys.argv[2]).read())
if sys.argv[3] == "scann":
  import scann  # ScaNN's ops, as in a TF Serving build with ScaNN
model = tf.saved_model.load(export)
rng = np.random.default_rng(0)

def inputs(signature, batch):
  specs = model.signatures[signature].structured_input_signature[1]
  values = {}
  for name, spec in specs.items():
    if name == "k":
      values[name] = np.full(batch, 10 if signature == "recommend" else 100, np.int32)
    elif name == "exclude_item_ids":
      values[name] = rng.choice(sample["item_id"], (batch, 20)).astype(bytes)
    elif name == "item_id":
      values[name] = rng.choice(sample["item_id"], (batch, 100)).astype(bytes)
    elif spec.dtype == tf.float32:
      values[name] = rng.choice(np.asarray(sample[name], np.float32), batch)
    else:
      values[name] = rng.choice(sample[name], batch).astype(bytes)
  return {name: tf.constant(value) for name, value in values.items()}

rows = []
for signature in ("retrieve", "rank", "recommend"):
  for batch, calls in ((1, 200), (256, 30)):
    function, request = model.signatures[signature], inputs(signature, batch)
    for _ in range(20):
      function(**request)
    times = []
    for _ in range(calls):
      start = time.perf_counter()
      function(**request)
      times.append((time.perf_counter() - start) * 1000)
    rows.append({"signature": signature, "batch": batch,
                 "p50_ms": float(np.percentile(times, 50)),
                 "p99_ms": float(np.percentile(times, 99))})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rows": rows, "peak_rss_gb": peak, "tfmtl_imported": "tfmtl" in sys.modules}))
"""


def movielens_model():
  config = ExperimentConfig().with_overrides(["train.epochs=1"])
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  users = prepared.data.users
  sample = {name: users[name].astype(str if name != "age" else float).tolist()[:500]
            for name in model.encoder.user_inputs}
  sample["item_id"] = prepared.data.items["item_id"].tolist()
  return model, sample


def synthetic_model():
  """1M items, ids only; one interaction per item (so every id is known)."""
  items = np.char.add("i", np.arange(SYNTHETIC_ITEMS).astype(str)).astype(object)
  users = np.char.add("u", (np.arange(SYNTHETIC_ITEMS) % 10_000).astype(str)).astype(object)
  rng = np.random.default_rng(0)
  interactions = pd.DataFrame({"user_id": users, "item_id": items,
                               "rating": rng.integers(1, 6, SYNTHETIC_ITEMS).astype(float)})
  data = InteractionData.from_frames(interactions, name="synthetic")
  config = ExperimentConfig()
  model = build_model(config, FeatureVocabulary.build(data, interactions), data.items)
  model.create_variables()
  sample = {"user_id": users[:10_000].tolist(), "item_id": items.tolist()}
  return model, sample


def recall_at_100(approximate: Path, exact: Path, model, sample: dict) -> float:
  """Share of the exact top 100 that `approximate` retrieves, 256 users."""
  request = {name: np.resize(np.asarray(sample[name]), 256) for name in model.encoder.user_inputs}
  request["user_id"] = np.random.default_rng(1).choice(sample["user_id"], 256)
  request = {name: tf.constant(value.astype(np.float32) if value.dtype.kind == "f" else value)
             for name, value in request.items()}
  request.update(k=tf.fill([256], 100), exclude_item_ids=tf.zeros([256, 0], tf.string))
  found = [tf.saved_model.load(str(path)).signatures["retrieve"](**request)["item_ids"].numpy()
           for path in (approximate, exact)]
  return float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(*found)]))


def measure(export: Path, sample: dict, index: str) -> dict:
  sample_file = export.parent / "sample.json"
  sample_file.write_text(json.dumps(sample))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _MEASURE, str(export), str(sample_file), index],
                          capture_output=True, text=True, env=env, cwd="/", check=False)
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-3000:])
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  assert not measured["tfmtl_imported"]
  return measured


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--index", choices=["brute_force", "partitioned", "scann"],
                      default="brute_force")
  index = parser.parse_args().index
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for catalogue, make in (("movielens_1682", movielens_model),
                            ("synthetic_1000000", synthetic_model)):
      model, sample = make()
      start = time.perf_counter()
      export = export_model(model, folder, catalogue, index=index)
      built = {"build_s": time.perf_counter() - start}
      measured = measure(export, sample, index)
      recall = {}
      if index != "brute_force":
        exact = export_model(model, folder, f"{catalogue}_exact")
        recall = {"recall_at_100": recall_at_100(export, exact, model, sample)}
        print(f"{catalogue}: {index} recall@100 {recall['recall_at_100']:.3f}", flush=True)
      for row in measured["rows"]:
        rows.append({"catalogue": catalogue, "index": index, **row,
                     "peak_rss_gb": measured["peak_rss_gb"],
                     **(recall if row["signature"] == "retrieve" else {}), **built})
        print(f"{catalogue:<18} {row['signature']:<10} batch {row['batch']:>3}: "
              f"p50 {row['p50_ms']:8.2f} ms, p99 {row['p99_ms']:8.2f} ms", flush=True)
      print(f"{catalogue}: peak RSS {measured['peak_rss_gb']:.2f} GB", flush=True)
  name = "serving_latency" if index == "brute_force" else f"serving_latency_{index}"
  settings = {"index": index, "tensorflow": tf.__version__,
              "calls": {"batch_1": 200, "batch_256": 30, "warm_up": 20}}
  seeds = [ExperimentConfig().seed]  # the MovieLens model's; the 1M catalogue is untrained
  print(f"-> {write_record(name, settings, {'rows': rows}, seeds)}")


if __name__ == "__main__":
  main()
