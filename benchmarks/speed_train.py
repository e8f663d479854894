"""Training throughput of tfmtl's default model against the TFRS recipe.

Both train on the same data (MovieLens 100K, protocol A train split: 80,000
ratings) in one process, in alternating rounds, so the machine's load hits
both alike; the figure is the ratio of their median epoch throughputs.
The recipe runs in its fastest honest form (training metrics off, cached
batches of 8192, as TFRS advises); tfmtl runs its default config (32 steps
per call into TensorFlow on one device), the same config at Keras' 1 step
per call, and compiled with XLA and 16 steps per call
(`train.steps_per_execution`, `train.jit_compile`).

    python benchmarks/speed_train.py [--rounds 3] [--set KEY=VALUE ...] [--output NAME]

`--set` changes both tfmtl contenders (e.g. `train.precision=mixed_bfloat16`).
Writes benchmarks/results/speed_train.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import time

import tfmtl  # noqa: F401  (binds Keras 2 first)
import numpy as np
import tf_keras as keras

from tfmtl import training
from tfmtl.config import ExperimentConfig
from tfmtl.data import make_dataset
from tfmtl.distribute import make_strategy, steps_per_execution

from common import summary, write_result
from tfrs_recipe import build_recipe

ONE_STEP = ["train.steps_per_execution=1"]
COMPILED = ["train.jit_compile=true", "train.steps_per_execution=16"]


class EpochTimer(keras.callbacks.Callback):
  def on_train_begin(self, logs=None):
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self.start)


def epoch_seconds(model, dataset, epochs: int) -> list[float]:
  timer = EpochTimer()
  model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
  return timer.times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--epochs-per-round", type=int, default=2)
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--output", default="speed_train")
  args = parser.parse_args()

  config = ExperimentConfig().with_overrides(
      ["split.protocol=random", "split.fractions=[0.8, 0.0, 0.2]", *args.set])
  prepared = training.prepare(config)
  train = prepared.split.train
  contenders = {"tfmtl": config, "tfmtl_1_step": config.with_overrides(ONE_STEP),
                "tfmtl_compiled": config.with_overrides(COMPILED)}
  runs = {}
  for name, contender in contenders.items():
    model = training.build_model(contender, prepared.vocabulary, prepared.data.items)
    runs[name] = model, make_dataset(prepared.data, train, model.encoder,
                                     config.train.batch_size, shuffle=True, seed=config.seed)
  runs["recipe"] = build_recipe(prepared.data, train)

  times = {name: [] for name in runs}
  for model, dataset in runs.values():
    epoch_seconds(model, dataset, 1)  # warm-up: tracing and caching
  for _ in range(args.rounds):
    for name, (model, dataset) in runs.items():
      times[name] += epoch_seconds(model, dataset, args.epochs_per_round)

  throughput = {name: [len(train) / t for t in values] for name, values in times.items()}
  rate = {name: float(np.median(values)) for name, values in throughput.items()}
  path = write_result(args.output, {
      "protocol": "speed",
      "settings": {
          "data": f"MovieLens 100K protocol A train split ({len(train)} ratings)",
          "tfmtl": {"batch_size": config.train.batch_size, "optimizer": config.train.optimizer,
                    "training_metrics": config.train.training_metrics,
                    "steps_per_execution": steps_per_execution(make_strategy("default"),
                                                               config.train),
                    "overrides": args.set, "tfmtl_1_step": ONE_STEP,
                    "tfmtl_compiled": COMPILED},
          "tfrs_recipe": {"batch_size": 8192, "optimizer": "adagrad",
                          "training_metrics": False},
          "rounds": args.rounds, "epochs_per_round": args.epochs_per_round,
          "threads": "TensorFlow defaults (all cores)"},
      "metrics": {**{f"{name}_examples_per_s": rate[name] for name in contenders},
                  "tfrs_recipe_examples_per_s": rate["recipe"],
                  "ratio": rate["tfmtl"] / rate["recipe"],
                  "ratio_1_step": rate["tfmtl_1_step"] / rate["recipe"],
                  "ratio_compiled": rate["tfmtl_compiled"] / rate["recipe"]},
      "spread": {name: summary(values) for name, values in throughput.items()},
  })
  print(", ".join(f"{name} {value:,.0f} examples/s" for name, value in rate.items()),
        "ratios", ", ".join(f"{name} {rate[name] / rate['recipe']:.2f}" for name in contenders),
        f"-> {path}")


if __name__ == "__main__":
  main()
