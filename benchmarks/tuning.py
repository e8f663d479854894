"""A KerasTuner search on MovieLens 100K, and its best config on test.

Runs (or resumes) the search `configs/movielens_100k_tune.yaml` declares,
the same one `tfmtl tune --config configs/movielens_100k_tune.yaml` runs,
in `tuning/movielens_100k/`: every trial is trained on protocol B's train
split and scored on its validation split. Then the best trial's config and
the default config are each trained with 3 seeds and evaluated on protocol
B's test split, side by side.

    python benchmarks/tuning.py [--seeds 0 1 2] [--set KEY=VALUE ...]

`--set` overrides the search's config (e.g. `tune.max_trials=5`). Writes
benchmarks/results/tuning.json (common.write_record).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import training
from tfmtl.config import ExperimentConfig
from tfmtl.tuning import Search, trial_overrides

from common import format_summaries, write_record
from protocols import run_protocol

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "configs" / "movielens_100k_tune.yaml"


def trial_rows(search: Search) -> list[dict]:
  """Each finished trial: its values and validation metrics, best first."""
  space = search.config.tune.space
  return [{"trial": trial.trial_id, "score": trial.score,
           "overrides": trial_overrides(space, trial.hyperparameters.values),
           "validation": {name: trial.metrics.get_last_value(name)
                          for name in ("recall@10", "ndcg@10", "rating_rmse")}}
          for trial in search.oracle.get_best_trials(len(search.oracle.trials))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--set", action="append", default=[])
  args = parser.parse_args()

  config = ExperimentConfig.from_file(SEARCH).with_overrides(
      [f"tune.directory={ROOT / 'tuning'}", *args.set])
  search = Search(config)
  search.search(training.prepare(config), verbose=0)
  best = search.write_best_config()
  trials = trial_rows(search)
  print(f"{len(trials)} trials; best {trials[0]['trial']}: {trials[0]['score']:.4f} "
        f"({' '.join(trials[0]['overrides'])})", flush=True)

  tuned = run_protocol("B", args.seeds, [], str(best))
  default = run_protocol("B", args.seeds, [])
  path = write_record("tuning", {
      "protocol": "B (search on its validation split, test split below)",
      "search": {"config": str(SEARCH.relative_to(ROOT)), "overrides": args.set,
                 "algorithm": config.tune.algorithm,
                 "objective": config.tune.objective, "direction": config.tune.direction,
                 "space": config.tune.space}}, {
      "trials": trials,
      "best_overrides": trials[0]["overrides"],
      "test": {"tuned": tuned, "default": default},
  }, args.seeds)
  for name, result in (("tuned", tuned), ("default", default)):
    print(f"{name}: {format_summaries(result['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
