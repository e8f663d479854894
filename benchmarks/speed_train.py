"""Training throughput of tfmtl's default model against the TFRS recipe.

Both train on the same data (MovieLens 100K, protocol A train split: 80,000
ratings) in one process, in alternating rounds, so the machine's load hits
both alike; a process's figure is the ratio of their median epoch
throughputs. Several fresh processes run one after another, since on a
2-core VM tfmtl's median moved between 245,000 and 381,000 examples/s
from one process to the next (the runs of 2026-11-30's last session) while
the recipe's stayed between 38,900 and 40,700; the result is the median of
their ratios, each process's kept beside it.

The recipe runs in its fastest honest form (training metrics off, cached
batches of 8192, as TFRS advises); tfmtl runs its default config (32 steps
per call into TensorFlow on one device), the same config at Keras' 1 step
per call, and compiled with XLA and 16 steps per call
(`train.steps_per_execution`, `train.jit_compile`).

    python benchmarks/speed_train.py [--processes 3] [--rounds 5] [--set KEY=VALUE ...]
        [--output NAME]

`--set` changes the three tfmtl contenders (e.g. `train.precision=mixed_bfloat16`).
Writes benchmarks/results/speed_train.json (or NAME.json; results/device/ where
a GPU or TPU is present: common.write_record).
"""

from __future__ import annotations

import argparse
import multiprocessing

import tfmtl  # noqa: F401  (binds Keras 2 first)
import numpy as np

from tfmtl import training
from tfmtl.model import build_model
from tfmtl.config import ExperimentConfig
from tfmtl.data import make_dataset
from tfmtl.distribute import make_strategy, steps_per_execution

from tfmtl.training import EpochTimer
from common import summary, write_record
from tfrs_recipe import build_recipe

ONE_STEP = ["train.steps_per_execution=1"]
COMPILED = ["train.jit_compile=true", "train.steps_per_execution=16"]


def epoch_seconds(model, dataset, epochs: int) -> list[float]:
  timer = EpochTimer()
  model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
  return timer.times


def measure(rounds: int, epochs_per_round: int, overrides: list[str]) -> dict:
  """One process's alternating rounds: each contender's epoch throughputs."""
  config = ExperimentConfig().with_overrides(
      ["split.protocol=random", "split.fractions=[0.8, 0.0, 0.2]", *overrides])
  prepared = training.prepare(config)
  train = prepared.split.train
  contenders = {"tfmtl": config, "tfmtl_1_step": config.with_overrides(ONE_STEP),
                "tfmtl_compiled": config.with_overrides(COMPILED)}
  runs = {}
  for name, contender in contenders.items():
    model = build_model(contender, prepared.vocabulary, prepared.data.items)
    runs[name] = model, make_dataset(prepared.data, train, model.encoder,
                                     config.train.batch_size, shuffle=True, seed=config.seed)
  runs["tfrs_recipe"] = build_recipe(prepared.data, train)

  times = {name: [] for name in runs}
  for model, dataset in runs.values():
    epoch_seconds(model, dataset, 1)  # warm-up: tracing and caching
  for _ in range(rounds):
    for name, (model, dataset) in runs.items():
      times[name] += epoch_seconds(model, dataset, epochs_per_round)
  return {"rows": len(train), "seed": config.seed, "batch_size": config.train.batch_size,
          "optimizer": config.train.optimizer,
          "training_metrics": config.train.training_metrics,
          "steps_per_execution": steps_per_execution(make_strategy("default"), config.train),
          "throughput": {name: [len(train) / t for t in values]
                         for name, values in times.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--epochs-per-round", type=int, default=2)
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--output", default="speed_train")
  args = parser.parse_args()

  runs = []
  for _ in range(args.processes):  # each in a fresh process, one after another
    with multiprocessing.get_context("spawn").Pool(1) as pool:
      runs.append(pool.apply(measure, (args.rounds, args.epochs_per_round, args.set)))
  names = list(runs[0]["throughput"])
  contenders = [name for name in names if name != "tfrs_recipe"]
  rates = [{name: float(np.median(values)) for name, values in run["throughput"].items()}
           for run in runs]
  ratios = {name: [rate[name] / rate["tfrs_recipe"] for rate in rates] for name in contenders}
  first = runs[0]
  path = write_record(args.output, {
      "data": f"MovieLens 100K protocol A train split ({first['rows']} ratings)",
      "tfmtl": {"batch_size": first["batch_size"], "optimizer": first["optimizer"],
                "training_metrics": first["training_metrics"],
                "steps_per_execution": first["steps_per_execution"],
                "overrides": args.set, "tfmtl_1_step": ONE_STEP,
                "tfmtl_compiled": COMPILED},
      "tfrs_recipe": {"batch_size": 8192, "optimizer": "adagrad",
                      "training_metrics": False},
      "processes": args.processes, "rounds": args.rounds,
      "epochs_per_round": args.epochs_per_round,
      "threads": "TensorFlow defaults (all cores)"}, {
      "metrics": {**{f"{name}_examples_per_s": float(np.median([r[name] for r in rates]))
                     for name in names},
                  **{name.replace("tfmtl", "ratio"): float(np.median(ratios[name]))
                     for name in contenders}},
      "processes": [{"ratios": {name: ratios[name][i] for name in contenders},
                     "examples_per_s": rates[i],
                     "spread": {name: summary(values)
                                for name, values in run["throughput"].items()},
                     "epochs_examples_per_s": {name: [round(value) for value in values]
                                               for name, values in run["throughput"].items()}}
                    for i, run in enumerate(runs)],
  }, [first["seed"]])
  print("ratios by process:", "; ".join(
      ", ".join(f"{name} {ratios[name][i]:.2f}" for name in contenders)
      for i in range(len(runs))), f"-> {path}")


if __name__ == "__main__":
  main()
