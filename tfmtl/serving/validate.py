"""Checks an export the way TF Serving will use it (`tfmtl validate`).

1. `saved_model_cli scan` finds none of the ops TF Serving refuses (its
   scan runs in the fresh process of check 2, before the load).
2. A fresh Python process that never imports tfmtl loads the SavedModel,
   lists its signatures and replays every warm-up request in
   `assets.extra/tf_serving_warmup_requests`. For a ScaNN index it first
   imports scann, which registers ScaNN's ops, as a TF Serving build with
   ScaNN has them; a brute-force export loads with TensorFlow alone.
3. The signatures and their inputs (names, dtypes, declared ranks) are the
   ones the run's model declares (`ServingModule` declares every input with
   any shape and checks the documented ranks inside, so an older export
   that declares ranks, and lacks those checks, fails here).
4. Every number the replayed requests got is finite (a model whose weights
   went NaN, e.g. trained with far too high a learning rate, fails here,
   naming the signature and output).
5. Every replayed answer matches the run's in-memory model on the same
   request (strings equal, numbers within `atol`).

Example (after `tfmtl run`): `tfmtl validate --run runs/movielens_100k`, or

    from tfmtl.serving.validate import validate_export
    checks = validate_export("runs/movielens_100k", "saved_models/movielens_100k/1")
    assert all(check.passed for check in checks)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfmtl import runs
from tfmtl.serving.index import BruteForceIndex, saved_centroids
from tfmtl.serving.signatures import ServingModule
from tfmtl.serving.text import ServingText
from tfmtl.serving.tf_serving import WARMUP_FILE

# Run by a fresh interpreter: argv = export folder, output .npz path, index.
_REPLAY = r"""
import contextlib, io, json, sys
import numpy as np
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli, saved_model_utils
from tensorflow_serving.apis import prediction_log_pb2
export, out, index = sys.argv[1:4]
scan = io.StringIO()
with contextlib.redirect_stdout(scan):  # what `saved_model_cli scan --dir export` prints
  for meta_graph in saved_model_utils.read_saved_model(export).meta_graphs:
    saved_model_cli.scan_meta_graph_def(meta_graph, saved_model_cli._OP_DENYLIST)
try:
  import tensorflow_text  # TF Text's ops (an export's text tokenizer), built into TF Serving
except ImportError:
  pass
if index == "scann":
  import scann  # ScaNN's ops, as in a TF Serving build with ScaNN
model = tf.saved_model.load(export)
signatures = {name: {key: [spec.dtype.name, spec.shape.rank]
                     for key, spec in function.structured_input_signature[1].items()}
              for name, function in model.signatures.items()}
answers, replayed = {}, 0
for record in tf.data.TFRecordDataset(export + "/assets.extra/tf_serving_warmup_requests"):
  request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
  outputs = model.signatures[request.model_spec.signature_name](
      **{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
  for name, value in outputs.items():
    value = value.numpy()
    answers[f"{replayed}/{name}"] = value.astype(bytes) if value.dtype == object else value
  replayed += 1
np.savez(out, **answers)
print(json.dumps({"scan": scan.getvalue(), "signatures": signatures, "replayed": replayed,
                  "tfmtl_imported": "tfmtl" in sys.modules}))
"""


class Check(NamedTuple):
  name: str
  passed: bool
  detail: str


def validate_export(run_dir: str | Path, export_dir: str | Path,
                    atol: float = 1e-4) -> list[Check]:
  """The checks of the module doc, for `export_dir` made from `run_dir`."""
  export_dir = Path(export_dir).resolve()
  if not (export_dir / "saved_model.pb").is_file():
    raise FileNotFoundError(f"{export_dir}: no saved_model.pb (not an export version folder)")
  missing = [name for name, found in (
      ("variables/variables.index", (export_dir / "variables" / "variables.index").is_file()),
      ("variables/variables.data-*", any((export_dir / "variables").glob("variables.data-*"))))
             if not found]
  if missing:
    raise FileNotFoundError(f"{export_dir}: an incomplete SavedModel ({', '.join(missing)} "
                            "missing); export the run again")
  config, model = runs.load_run(run_dir)
  module = ServingModule.from_config(model, config.export, ServingText.for_run(run_dir, config),
                                     saved_centroids(export_dir))  # a partitioned index's
  with tempfile.TemporaryDirectory() as folder:
    replay, answers = _replay_in_fresh_process(export_dir, Path(folder) / "answers.npz",
                                               config.export.index)
    checks = [_scan_check(replay["scan"])]
    checks.append(Check("fresh process loads it and replays the warm-up requests",
                        replay["replayed"] > 0 and not replay["tfmtl_imported"],
                        f"{replay['replayed']} requests replayed without tfmtl"))
    checks.append(_signatures_check(module, replay["signatures"]))
    requests = _warmup_requests(export_dir)
    checks.append(_finite_check(requests, answers))
    checks.append(_answers_check(module, requests, answers, atol))
    if not isinstance(module.index, BruteForceIndex):
      checks.append(_recall_check(module, requests, config.export.min_recall))
  return checks


def _recall_check(module: ServingModule, requests: list[tuple[str, dict]],
                  floor: float) -> Check:
  """An approximate index's recall@100 against brute force over the same
  embeddings, for the users of the warm-up `retrieve` requests."""
  queries = tf.concat([module._query(inputs)  # pylint: disable=protected-access
                       for signature, inputs in requests if signature == "retrieve"], 0)
  n = min(100, module.num_items)
  nothing = tf.fill([tf.shape(queries)[0], 0], -1)
  _, found = module.index.top(queries, n, nothing)
  _, exact = BruteForceIndex(module.candidate_matrix).top(queries, n, nothing)
  recall = float(np.mean([len(set(a) & set(b)) / n for a, b in zip(found.numpy(),
                                                                     exact.numpy())]))
  return Check(f"recall@{n} against brute force at least export.min_recall ({floor})",
               recall >= floor, f"recall@{n} {recall:.3f} over {len(queries)} warm-up queries")


def _scan_check(scanned: str) -> Check:
  """`saved_model_cli scan`'s verdict on each of the export's graphs."""
  found = [line for line in scanned.splitlines() if "denylisted ops" in line]
  passed = bool(found) and all("does not contain" in line for line in found)
  return Check("saved_model_cli scan: no ops TF Serving refuses", passed,
               "; ".join(found) or "no graph scanned")


def _replay_in_fresh_process(export_dir: Path, out: Path, index: str) -> tuple[dict, dict]:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _REPLAY, str(export_dir), str(out), index],
                          capture_output=True, text=True, timeout=900, env=env, cwd="/")
  if result.returncode != 0:  # the exception's line, not TensorFlow's log lines after it
    lines = result.stderr.strip().splitlines() or ["no output"]
    last = next((line for line in reversed(lines)
                 if re.match(r"[\w.]+(Error|Exception)\b", line)), lines[-1])
    raise RuntimeError(f"{export_dir}: a fresh process could not load it and replay the "
                       f"warm-up requests: {last}")
  with np.load(out) as answers:
    return json.loads(result.stdout.strip().splitlines()[-1]), dict(answers)


def _signatures_check(module: ServingModule, saved: dict) -> Check:
  """The saved signatures' inputs ([dtype, declared rank] by name) against
  those the module's functions declare."""
  expected = {name: {key: [spec.dtype.name, spec.shape.rank]
                     for key, spec in getattr(module, name).input_signature[0].items()}
              for name in module.signature_specs}
  differences = [f"{name}: saved {saved.get(name)}, documented {inputs}"
                 for name, inputs in expected.items() if saved.get(name) != inputs]
  differences += [f"{name}: not documented" for name in saved if name not in expected]
  return Check("signatures and inputs as documented", not differences,
               "; ".join(differences) or ", ".join(sorted(saved)))


def _warmup_requests(export_dir: Path) -> list[tuple[str, dict]]:
  """The export's warm-up requests, in order: (signature name, inputs)."""
  requests = []
  for record in tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE)):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    requests.append((request.model_spec.signature_name,
                     {name: tf.constant(tf.make_ndarray(proto))
                      for name, proto in request.inputs.items()}))
  return requests


def _finite_check(requests: list[tuple[str, dict]], answers: dict) -> Check:
  """Whether every float output of the replayed requests is finite (the
  lowest float32, which marks empty places, is)."""
  bad = []
  for key, value in answers.items():  # "<request index>/<output name>"
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      index, name = key.split("/", 1)
      bad.append(f"{requests[int(index)][0]}.{name} (request {index})")
  if not bad:
    return Check("every output is finite", True,
                 f"the outputs of {len(requests)} requests are finite")
  more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
  return Check("every output is finite", False,
               f"not finite (NaN or infinite): {'; '.join(bad[:5])}{more}")


def _answers_check(module: ServingModule, requests: list[tuple[str, dict]], answers: dict,
                   atol: float) -> Check:
  worst, mismatches = 0.0, []
  for index, (signature, inputs) in enumerate(requests):
    for name, value in getattr(module, signature)(inputs).items():
      served, expected = answers[f"{index}/{name}"], value.numpy()
      if expected.dtype == object:
        same = served.tolist() == expected.astype(bytes).tolist()
      else:
        gap = float(np.max(np.abs(served - expected), initial=0.0))
        worst, same = max(worst, gap), gap <= atol
      if not same:
        mismatches.append(f"{signature}.{name} (request {index})")
  return Check("answers match the in-memory model", not mismatches,
               "; ".join(mismatches[:5]) or f"largest difference {worst:.2g} (tolerance {atol})")
