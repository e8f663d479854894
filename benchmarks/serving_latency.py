"""Serving latency: the exported SavedModel's signatures, loaded in a fresh process.

Exports of the default model (embedding 32, towers [64], retrieval + rating
+ like), each loaded by a fresh Python that never imports tfmtl, as TF
Serving would load it; each signature is called at batch 1 and 256 after
warm-up calls:

- `retrieve`: top 100 over the whole catalogue, 20 excluded items per user;
- `rank`: 100 candidates per user;
- `recommend`: retrieve 100 (20 excluded), rank them, top 10.

Catalogues (`--catalogues`):

- `movielens_1682`: MovieLens 100K, trained one epoch; every signature.
- `synthetic_<n>`: the default model trained one epoch on the synthetic
  generator's skewed data with `n` items (`3n` interactions, at most 10M,
  of `n / 10` users, 20 planted tastes; each item also gets one
  interaction, so every item is in the catalogue); `retrieve` only, the signature an index
  serves.
- `random_<n>`: `n` item ids, untrained: random item vectors, the worst
  case for an index that clusters; `retrieve` only.

With `--index partitioned` (or `scann`) each catalogue is exported with
brute force and once per `--quantization` and `--nprobe` (or with ScaNN),
side by side in one run. A process of its own makes and saves each
catalogue's model (as a run), another builds each export from that run,
and a fresh Python measures each export, so none holds another's memory (a
10M catalogue's model, training data and exports do not fit in 24 GB
together). Rows: `catalogue`, `index` (`brute_force`, `scann`, or
`partitioned` with its `quantization` and `nprobe`, 0 for the default),
`signature`, `batch`, `p50_ms`, `p99_ms` (over 200 calls at batch 1, 30 at
batch 256; batch 1 only from 5M items, where brute force's batch of 256
would hold a 10 GB score matrix), the measuring process's peak RSS after
them (`peak_rss_gb`), `build_s` (the export's seconds), `export_gb` (its
files' size) and, for an approximate index's `retrieve`, `recall_at_100`:
the share of brute force's top 100 it returns, over 256 users without
exclusions.

    python benchmarks/serving_latency.py                      # brute force
    python benchmarks/serving_latency.py --index partitioned  # k-means partitions
    python benchmarks/serving_latency.py --index partitioned --catalogues synthetic_10000000
    python benchmarks/serving_latency.py --index partitioned --nprobe 0 20 40
    python benchmarks/serving_latency.py --index scann        # in the scann extra's env
    python benchmarks/serving_latency.py --index scann --scann num_leaves_to_search=300

Writes benchmarks/results/serving_latency.json, or serving_latency_<index>.json;
rows of catalogues not measured again are kept, with their `commit`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
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
from tfmtl.config import ExperimentConfig, PartitionedConfig, ScannConfig
from tfmtl.config.section import load_section
from tfmtl.runs import load_run, save_run
from tfmtl.serving import export_model

from common import results_dir, write_record

# The synthetic catalogues' skewed interactions at most: 10M items' 30M and the
# model they train outgrew 24 GB.
SYNTHETIC_INTERACTIONS = 10_000_000

# Run by a fresh interpreter: argv = export folder, a JSON file of input values, index,
# the signatures (comma-separated), the calls at batch 256 and a JSON file of the
# recall users' inputs. Peak RSS is VmHWM: ru_maxrss would carry the
# launching process's peak across exec.
_MEASURE = r"""
import json, sys, time
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
for signature in sys.argv[4].split(","):
  for batch, calls in ((1, 200), (256, int(sys.argv[5])))[:2 if int(sys.argv[5]) else 1]:
    function, request = model.signatures[signature], inputs(signature, batch)
    for _ in range(20 if batch == 1 else 3):
      function(**request)
    times = []
    for _ in range(calls):
      start = time.perf_counter()
      function(**request)
      times.append((time.perf_counter() - start) * 1000)
    rows.append({"signature": signature, "batch": batch,
                 "p50_ms": float(np.percentile(times, 50)),
                 "p99_ms": float(np.percentile(times, 99))})
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) / 2**20  # kB -> GB
found = []  # top 100 without exclusions, 8 users a call (brute force over 10M: 8 x 10M scores)
users = {name: np.asarray(value) for name, value in json.loads(open(sys.argv[6]).read()).items()}
for start in range(0, len(next(iter(users.values()))), 8):
  request = {name: tf.constant(value[start:start + 8].astype(np.float32 if value.dtype.kind == "f"
                                                             else bytes))
             for name, value in users.items()}
  size = len(next(iter(request.values())))
  found += model.signatures["retrieve"](**request, k=tf.fill([size], 100),
      exclude_item_ids=tf.zeros([size, 0], tf.string))["item_ids"].numpy().astype(str).tolist()
print(json.dumps({"rows": rows, "peak_rss_gb": peak, "found": found,
                  "tfmtl_imported": "tfmtl" in sys.modules}))
"""


def movielens_model(folder: Path):
  """The default model trained one epoch on MovieLens 100K."""
  config = ExperimentConfig().with_overrides(
      ["train.epochs=1", f"train.run_dir={folder / 'checkpoints'}"])
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  users = prepared.data.users
  sample = {name: users[name].astype(str if name != "age" else float).tolist()[:500]
            for name in model.encoder.user_inputs}
  return config, prepared, model, sample


def synthetic_model(folder: Path, num_items: int):
  """The default model trained one epoch on skewed synthetic data (module doc)."""
  from tfmtl.data.synthetic import data_config, write_synthetic
  skewed = min(3 * num_items, SYNTHETIC_INTERACTIONS)
  data = write_synthetic(folder / "data", skewed, num_users=num_items // 10,
                         num_items=num_items, seed=0)
  users = pd.read_parquet(data / "users.parquet")
  items = pd.read_parquet(data / "items.parquet")
  rng = np.random.default_rng(0)
  pd.DataFrame({"user_id": rng.choice(users["user_id"].to_numpy(), num_items),
                "item_id": items["item_id"].to_numpy(),
                "rating": rng.integers(1, 6, num_items).astype(float),
                "timestamp": np.full(num_items, skewed)}
               ).to_parquet(data / "interactions-every-item.parquet")
  config = ExperimentConfig.from_dict({
      "name": "synthetic",
      "data": data_config(data),
      "split": {"fractions": [1.0, 0.0, 0.0]},
      "train": {"epochs": 1, "optimizer": "lazy_adam", "run_dir": str(folder / "checkpoints"),
                "validate_every": 0, "log_dir": ""}})
  prepared = training.prepare(config)
  sample = {"user_id": users["user_id"].tolist()[:10_000],
            "segment": users["segment"].tolist()[:10_000]}
  return config, prepared, training.fit(config, prepared, verbose=0), sample


def random_model(folder: Path, num_items: int):
  """`num_items` ids, untrained; one interaction per item (so every id is known)."""
  items = np.char.add("i", np.arange(num_items).astype(str)).astype(object)
  users = np.char.add("u", (np.arange(num_items) % 10_000).astype(str)).astype(object)
  rng = np.random.default_rng(0)
  (folder / "data").mkdir()
  pd.DataFrame({"user_id": users, "item_id": items,
                "rating": rng.integers(1, 6, num_items).astype(float)}
               ).to_parquet(folder / "data" / "interactions.parquet")
  config = ExperimentConfig.from_dict({
      "name": "random",
      "data": {"source": "files", "interactions": str(folder / "data" / "interactions.parquet")},
      "split": {"fractions": [1.0, 0.0, 0.0]}})
  prepared = training.prepare(config)
  model = build_model(config, prepared.vocabulary, prepared.data.items)
  model.create_variables()
  return config, prepared, model, {"user_id": users[:10_000].tolist()}


def make_catalogue(name: str, folder: Path) -> None:
  """Saves the catalogue's model as the run `folder / "run"`, and the values
  its requests draw from as `folder / "sample.json"` (every catalogue item
  id, some users' features) and `folder / "users.json"` (`recall_users`)."""
  kind, _, size = name.rpartition("_")
  made = {"movielens": movielens_model, "synthetic": synthetic_model,
          "random": random_model}[kind]
  config, prepared, model, sample = made(folder, *([int(size)] if kind != "movielens" else []))
  save_run(folder / "run", config, prepared, model)
  sample["item_id"] = model.catalogue_item_ids.astype(str).tolist()
  (folder / "sample.json").write_text(json.dumps(sample))
  (folder / "users.json").write_text(json.dumps(recall_users(model, sample)))


def export_from_run(folder: Path, name: str, index: str, options: dict) -> None:
  """Exports the run `folder / "run"` as `folder / name` with `index`, and
  writes the export's path, seconds and size to `folder / f"{name}.json"`."""
  _, model = load_run(folder / "run")
  chosen = {"partitioned": PartitionedConfig(**options) if index == "partitioned" else None,
            "scann": ScannConfig(**options) if index == "scann" else None}
  start = time.perf_counter()
  export = export_model(model, folder, name, index=index, **chosen)
  (folder / f"{name}.json").write_text(json.dumps(
      {"export": str(export), "build_s": time.perf_counter() - start,
       "export_gb": sum(path.stat().st_size for path in Path(export).rglob("*")
                        if path.is_file()) / 2**30}))


def in_own_process(function, *args) -> None:
  """Runs `function(*args)` in a fresh Python; its memory goes back when it ends."""
  process = multiprocessing.get_context("spawn").Process(target=function, args=args)
  process.start()
  process.join()
  if process.exitcode != 0:
    raise RuntimeError(f"{function.__name__}{args}: exit code {process.exitcode}")


def recall_users(model, sample: dict) -> dict:
  """The 256 users (seeded) whose exact top 100 recall is measured against."""
  chosen = np.random.default_rng(1).choice(len(sample["user_id"]), 256)
  return {name: np.asarray(sample[name])[chosen].tolist() for name in model.encoder.user_inputs}


def recall_at_100(found: list, exact: list) -> float:
  """Share of each user's exact top 100 in `found`, averaged."""
  return float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found, exact)]))


def measure(export: Path, folder: Path, index: str, signatures: list[str], calls: int) -> dict:
  """`_MEASURE`'s result for `export`, run by a fresh Python without tfmtl."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _MEASURE, str(export),
                           str(folder / "sample.json"), index, ",".join(signatures),
                           str(calls), str(folder / "users.json")],
                          capture_output=True, text=True, env=env, cwd="/", check=False)
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-3000:])
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  assert not measured["tfmtl_imported"]
  return measured


def earlier_rows(path: Path, catalogues: list[str]) -> list[dict]:
  """The rows of the record at `path` for catalogues this run does not
  measure, each with the commit that measured it."""
  if not path.exists():
    return []
  earlier = json.loads(path.read_text())
  return [{"commit": earlier["commit"], **row} for row in earlier["results"]["rows"]
          if row["catalogue"] not in catalogues]


def measure_catalogue(catalogue: str, folder: Path, args) -> list[dict]:
  """The catalogue's model is made and saved by a process of its own, each
  export built by another (so none holds the memory of the one before), and
  each measured by a fresh Python: brute force first, whose top 100s the
  approximate indexes' recall is measured against."""
  in_own_process(make_catalogue, catalogue, folder)
  exports = [("brute_force", {})]
  if args.index == "partitioned":
    exports += [("partitioned", options) for options in args.partitioned]
  elif args.index == "scann":
    exports += [("scann", args.scann)]
  size = len(json.loads((folder / "sample.json").read_text())["item_id"])
  signatures = (["retrieve", "rank", "recommend"] if catalogue.startswith("movielens")
                else ["retrieve"])
  calls = 30 if size < 5_000_000 else 0  # batch 256 over 10M: a [256, 10M] score matrix
  rows, exact = [], None
  for number, (index, options) in enumerate(exports):
    name = f"{index}_{number}"
    in_own_process(export_from_run, folder, name, index, options)
    built = json.loads((folder / f"{name}.json").read_text())
    print(f"{catalogue}: exported {index} {options} in {built['build_s']:.0f} s", flush=True)
    measured = measure(Path(built["export"]), folder, index, signatures, calls)
    exact = exact or measured["found"]
    recall = {} if index == "brute_force" else {
        "recall_at_100": recall_at_100(measured["found"], exact)}
    for row in measured["rows"]:
      rows.append({"catalogue": catalogue, "index": index, **options, **row,
                   "peak_rss_gb": measured["peak_rss_gb"],
                   **(recall if row["signature"] == "retrieve" else {}),
                   "build_s": built["build_s"], "export_gb": built["export_gb"]})
      print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(folder / name)  # disk: a 10M catalogue's export holds gigabytes
  return rows


def scann_options(parser, options: list[str]) -> dict:
  """`--scann`'s OPTION=VALUE pairs as {option: int}, checked by
  `export.scann`'s rules before anything runs (a bad one is a usage error)."""
  try:
    chosen = {key: int(value) for key, value in (option.split("=") for option in options)}
    load_section(ScannConfig, chosen)
  except ValueError as error:  # no "=", not an integer, an unknown option or value
    parser.error(f"--scann {' '.join(options)}: give OPTION=INTEGER pairs of export.scann "
                 f"({error})")
  return chosen


def partitioned_options(parser, quantizations: list[str], nprobes: list[int]) -> list[dict]:
  """One export's `export.partitioned` options per `--quantization` and
  `--nprobe` pair, checked by `export.partitioned`'s rules before anything
  runs (a bad one is a usage error)."""
  chosen = [{"quantization": quantization, "nprobe": nprobe}
            for quantization in quantizations for nprobe in nprobes]
  try:
    for options in chosen:
      load_section(PartitionedConfig, options)
  except ValueError as error:  # ConfigError: an unknown quantization, a negative nprobe
    parser.error(f"--quantization {' '.join(quantizations)} --nprobe "
                 f"{' '.join(map(str, nprobes))}: {error}")
  return chosen


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--index", choices=["brute_force", "partitioned", "scann"],
                      default="brute_force")
  parser.add_argument("--catalogues", nargs="+",
                      default=["movielens_1682", "synthetic_1000000", "random_1000000"])
  parser.add_argument("--quantization", nargs="+", default=["none", "int8"],
                      help="the partitioned index's (one export each)")
  parser.add_argument("--nprobe", nargs="+", type=int, default=[0],
                      help="the partitioned index's partitions probed (one export each "
                           "per quantization; 0: from the catalogue's size)")
  parser.add_argument("--scann", nargs="*", default=[], metavar="OPTION=VALUE",
                      help="export.scann options, e.g. num_leaves_to_search=300")
  args = parser.parse_args()
  args.scann = scann_options(parser, args.scann)
  args.partitioned = partitioned_options(parser, args.quantization, args.nprobe)
  rows = []
  for catalogue in args.catalogues:
    with tempfile.TemporaryDirectory() as folder:
      rows += measure_catalogue(catalogue, Path(folder), args)
  name = "serving_latency" if args.index == "brute_force" else f"serving_latency_{args.index}"
  rows = [*earlier_rows(results_dir() / f"{name}.json", args.catalogues), *rows]
  settings = {"index": args.index, "tensorflow": tf.__version__, "catalogues": args.catalogues,
              "calls": {"batch_1": 200, "batch_256": "30 (none from 5M items)",
                        "warm_up": "20 at batch 1, 3 at batch 256"}}
  if args.index == "partitioned":
    settings.update(quantization=args.quantization, nprobe=args.nprobe)
  if args.index == "scann":
    settings["scann"] = args.scann  # the options given, by name
  seeds = [ExperimentConfig().seed]  # the models'; synthetic data and k-means use seed 0
  print(f"-> {write_record(name, settings, {'rows': rows}, seeds)}")


if __name__ == "__main__":
  main()
