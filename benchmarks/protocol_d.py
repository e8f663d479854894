"""Protocol D: transfer to a sparse domain, MovieLens 100K split by genre.

The target domain is every movie with the Comedy genre, the source domain
every other movie (disjoint; the users are shared). The target's ratings are
cut per user 8:1:1 (seed 42); its training part is then cut to a fraction
(10%, 25%, 50%, seed 42) while validation and test stay fixed. Target test
ratings are ranked among the target's movies only (the user's target
training and validation movies removed); RMSE is on the target test ratings.

Methods (the default multi-task model; target training with batch 256):

- `scratch`: trained on the target fraction alone;
- `finetune`: pretrained on all source ratings (`tfmtl train`, saved as a
  run), then fine-tuned on the target fraction through
  `transfer.pretrained` (every component, nothing frozen);
- `finetune_frozen`: the same with embeddings and towers frozen for the
  first 3 epochs (`transfer.freeze_epochs`);
- `finetune_frozen_embeddings`: the pretrained embeddings frozen throughout
  (`freeze_epochs: {embeddings: -1}`), the rest trained;
- `finetune_slow`: the pretrained weights at a tenth of the learning rate
  (`transfer.learning_rate_scale: 0.1`);
- `finetune+l2sp`: `finetune` with L2-SP (`transfer.l2sp: 0.001`);
- `joint`: sample-based transfer: one model trained on the target fraction
  with every source rating mixed in (`transfer.source`), at each source
  weight of `--source-weights` (`transfer.source_weight`; 1 and 0.5, the
  best on the target's validation ratings at 10%: `--on validation`), all
  ratings sharing one mean loss (`transfer.balance: rows`);
- `joint_balanced`: the same with `L_target + source_weight * L_source`,
  each domain's loss its own mean (`transfer.balance: domains`).

The target vocabulary holds the ids of both domains, so users the target
fraction lacks keep their pretrained rows (and get fresh ones from scratch).

    python benchmarks/protocol_d.py [--seeds 0 1 2] [--fractions 0.1 0.25 0.5]
        [--methods ...] [--source-weights 1 0.5] [--on test|validation]

Writes benchmarks/results/protocol_d.json (protocol_d_validation.json with
`--on validation`). Rows not run (another method, fraction or source
weight) keep their entries from the earlier file, which must then have the
same seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, runs, training
from tfmtl.config import ExperimentConfig
from tfmtl.data import Split, load_movielens_100k, per_user_split
from tfmtl.features import FeatureVocabulary

from common import format_summaries, results_dir, summary, write_record

TARGET_GENRE = "Comedy"
METHODS = {
    "scratch": [],
    "finetune": ["transfer.pretrained={run}"],
    "finetune_frozen": ["transfer.pretrained={run}",
                        "transfer.freeze_epochs={{embeddings: 3, towers: 3}}"],
    "finetune_frozen_embeddings": ["transfer.pretrained={run}",
                                   "transfer.freeze_epochs={{embeddings: -1}}"],
    "finetune_slow": ["transfer.pretrained={run}", "transfer.learning_rate_scale=0.1"],
    "finetune+l2sp": ["transfer.pretrained={run}", "transfer.l2sp=0.001"],
    "joint": [],
    "joint_balanced": ["transfer.balance=domains"],
}
JOINT = ("joint", "joint_balanced")  # the methods that mix the source in
METRICS = {"ndcg@10": "ndcg@10", "recall@10": "recall@10", "rmse": "rating_rmse"}


def domains():
  """(data, source interactions, target split with the full target train)."""
  data = load_movielens_100k()
  target_items = data.items.loc[data.items["genres"].str.split("|").map(
      lambda genres: TARGET_GENRE in genres), "item_id"]
  in_target = data.interactions["item_id"].isin(target_items)
  source = data.interactions[~in_target].reset_index(drop=True)
  target = per_user_split(data.interactions[in_target].reset_index(drop=True),
                          (0.8, 0.1, 0.1), seed=42)
  return data, source, target, target_items.to_numpy(object)


def pretrain(data, source: pd.DataFrame, seed: int, folder: Path) -> Path:
  config = ExperimentConfig().with_overrides([f"seed={seed}"])
  empty = source.iloc[:0]
  prepared = training.Prepared(data, Split(source, empty, empty),
                               FeatureVocabulary.build(data, source))
  model = training.fit(config, prepared, verbose=0)
  return runs.save_run(folder / f"source_{seed}", config, prepared, model)


def run_method(method, data, source, target: Split, fraction, seed, run, candidates,
               source_weight, on):
  """Target metrics of one method (`source_weight`: joint's, else None)."""
  train = target.train.sample(frac=fraction, random_state=42).reset_index(drop=True)
  both = pd.concat([source, train], ignore_index=True)
  overrides = [f"seed={seed}", "train.batch_size=256",
               *(o.format(run=run) for o in METHODS[method])]
  config = ExperimentConfig().with_overrides(overrides)
  mixed_in = None if source_weight is None else dataclasses.replace(
      data, interactions=source.assign(sample_weight=source_weight))
  split = Split(train, target.validation, target.test)
  prepared = training.Prepared(data, split, FeatureVocabulary.build(data, both), mixed_in,
                               source_balance=config.transfer.balance)
  model = training.fit(config, prepared, verbose=0)
  if on == "validation":
    split = evaluation.on_validation(split)
  metrics = evaluation.evaluate_model(model, data, split, [10], candidates=candidates)
  return {short: metrics[name] for short, name in METRICS.items()}


def earlier_rows(path: Path, planned: set, seeds: list[int]) -> list[dict]:
  """The rows of the record at `path` that this run does not redo (`planned`:
  its (fraction, method, source_weight)s); an error if there are any and
  their seeds differ."""
  if not path.exists():
    return []
  earlier = json.loads(path.read_text())
  kept = [row for row in earlier["results"]["rows"]
          if (row["fraction"], row["method"], row.get("source_weight")) not in planned]
  if kept and earlier["seeds"] != seeds:
    sys.exit(f"{path} has rows run with seeds {earlier['seeds']}, which this run would "
             "not replace; use those seeds")
  return kept


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--source-weights", type=float, nargs="+", default=[1.0, 0.5])
  parser.add_argument("--on", choices=["test", "validation"], default="test")
  args = parser.parse_args()
  name = "protocol_d" if args.on == "test" else "protocol_d_validation"
  planned = {(fraction, method, weight) for fraction in args.fractions for method in args.methods
             for weight in (args.source_weights if method in JOINT else [None])}
  kept = earlier_rows(results_dir() / f"{name}.json", planned, args.seeds)
  data, source, target, candidates = domains()
  print(f"source: {len(source)} ratings; target: {len(candidates)} movies, "
        f"{len(target.train)} / {len(target.validation)} / {len(target.test)} ratings")
  runs = {}
  with tempfile.TemporaryDirectory() as folder:
    for seed in args.seeds:
      run = pretrain(data, source, seed, Path(folder)) if any(
          "finetune" in m for m in args.methods) else None
      for fraction in args.fractions:
        for method in args.methods:
          for weight in args.source_weights if method in JOINT else [None]:
            metrics = run_method(method, data, source, target, fraction, seed, run,
                                 candidates, weight, args.on)
            runs.setdefault((fraction, method, weight), []).append(metrics)
            print(f"fraction {fraction} {method} source_weight {weight} seed {seed}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
  rows = [{"fraction": f, "method": m, **({} if w is None else {"source_weight": w}),
           "metrics": {k: summary([r[k] for r in results]) for k in METRICS}}
          for (f, m, w), results in runs.items()]
  rows = [*kept, *rows]
  path = write_record(name, {
      "protocol": "D", "on": args.on, "target_genre": TARGET_GENRE,
      "source_ratings": len(source), "target_movies": len(candidates),
      "target_split": [len(part) for part in target]}, {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['fraction']:<5} {row['method']:<16} {row.get('source_weight', ''):<5} "
          f"{format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
