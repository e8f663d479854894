"""Scaling: one training epoch of the default model on synthetic data of growing size.

For each size, a fresh Python process writes the synthetic interactions
(`tfmtl synthesize`: power-law skew, planted tastes; users = interactions /
50, items = interactions / 20), loads them, and trains the default model
(retrieval + rating + like, batch 1024) with `--optimizer` (default
lazy_adam, which updates only the embedding rows in the batch; Keras' Adam
moves every row of every table each step) for one epoch on the training
split (no validation metrics or TensorBoard logs: the epoch is training
alone), then evaluates it. Rows: `interactions`, `items`,
`prepare_seconds` (loading, splitting, vocabularies), `fit_seconds`
(`tfmtl.training.fit`: encoding the training examples, building the model,
the epoch), `seconds_per_epoch` (the epoch alone, its checkpoint included),
`examples_per_s` (over the epoch), `peak_rss_gb` (the process's peak
resident memory by the end of `fit`), `validation_seconds` (the validation
metrics an epoch adds by default: `train.validation_users` users against
the whole catalogue), `evaluate_seconds` and `test_users` (every test user
against the whole catalogue, as `tfmtl run` and `tfmtl evaluate` do) and
`peak_rss_gb_evaluate` (the peak by the end).

    python benchmarks/scaling.py                        # 1M, 5M and 20M
    python benchmarks/scaling.py --sizes 1000000        # one size
    python benchmarks/scaling.py --optimizer adam       # Keras' Adam
    python benchmarks/scaling.py --input tfrecord       # streamed from TFRecord shards

Writes benchmarks/results/scaling.json and scaling.png (log-log);
`--input tfrecord` writes scaling_tfrecord.json and .png, and another
optimizer scaling_<optimizer>.json and .png (e.g. scaling_adam).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import results_dir, write_record

# Run by a fresh interpreter: argv = folder, interactions, optimizer, input.
_MEASURE = r"""
import json, resource, sys, time
import tfmtl
from tfmtl import training
from tfmtl.config import ExperimentConfig
from tfmtl.data.synthetic import data_config, write_synthetic
from tfmtl.evaluation import ValidationMetrics, evaluate_model
from tfmtl.training import EpochTimer
folder, size, optimizer, train_input = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = write_synthetic(folder + "/data", size, num_users=max(size // 50, 100),
                       num_items=max(size // 20, 100), seed=0)
config = ExperimentConfig.from_dict({
    "name": "scaling",
    "data": data_config(data),
    "train": {"epochs": 1, "optimizer": optimizer, "input": train_input,
              "run_dir": folder + "/run", "validate_every": 0, "log_dir": ""}})
start = time.perf_counter()
prepared = training.prepare(config)
prepared_at = time.perf_counter()
timer = EpochTimer()  # fit's callbacks end with it: the epoch includes its checkpoint
model = training.fit(config, prepared, verbose=0, callbacks=[timer])
fitted_at = time.perf_counter()
peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
validation = ValidationMetrics(prepared.data, prepared.split, config.evaluate.ks,
                               max_users=config.train.validation_users, seed=config.seed)
validation.set_model(model)
validation.on_epoch_end(0)  # what each epoch's validation adds
validated_at = time.perf_counter()
evaluate_model(model, prepared.data, prepared.split, config.evaluate.ks)
evaluated_at = time.perf_counter()
rows = len(prepared.split.train)
print(json.dumps({"interactions": size, "items": len(prepared.data.items),
                  "training_examples": rows,
                  "prepare_seconds": prepared_at - start,
                  "fit_seconds": fitted_at - prepared_at,
                  "seconds_per_epoch": timer.times[0],
                  "examples_per_s": rows / timer.times[0],
                  "peak_rss_gb": peak_fit,
                  "validation_seconds": validated_at - fitted_at,
                  "evaluate_seconds": evaluated_at - validated_at,
                  "test_users": int(prepared.split.test["user_id"].nunique()),
                  "peak_rss_gb_evaluate":
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def measure(size: int, optimizer: str, train_input: str) -> dict:
  with tempfile.TemporaryDirectory() as folder:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    here = Path(__file__).resolve().parent  # common.py; the repository root: tfmtl
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent)])
    result = subprocess.run([sys.executable, "-c", _MEASURE, folder, str(size), optimizer,
                             train_input],
                            capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(6, 4))
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  sizes = [row["interactions"] for row in rows]
  axes.loglog(sizes, [row["seconds_per_epoch"] for row in rows], "o-", label="seconds per epoch")
  axes.loglog(sizes, [row["peak_rss_gb"] for row in rows], "s--", label="peak RSS (GB)")
  axes.set_xlabel("interactions")
  axes.legend()
  axes.grid(True, which="both", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+",
                      default=[1_000_000, 5_000_000, 20_000_000])
  parser.add_argument("--optimizer", default="lazy_adam")
  parser.add_argument("--input", default="memory", choices=["memory", "tfrecord"])
  args = parser.parse_args()
  rows = []
  for size in args.sizes:
    rows.append(measure(size, args.optimizer, args.input))
    print(json.dumps(rows[-1]), flush=True)
  name = "_".join(["scaling"] + [part for part in (args.input, args.optimizer)
                                  if part not in ("memory", "lazy_adam")])
  directory = results_dir()
  directory.mkdir(parents=True, exist_ok=True)
  plot(rows, directory / f"{name}.png")
  settings = {"optimizer": args.optimizer, "input": args.input, "sizes": args.sizes,
              "synthetic_seed": 0}
  seeds = [42]  # the measuring process's config sets none: ExperimentConfig's default
  print(f"-> {write_record(name, settings, {'rows': rows}, seeds, directory)}")


if __name__ == "__main__":
  main()
