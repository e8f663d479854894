"""Quality on MovieLens 100K, protocols A and B, over several seeds.

Protocol A (the TFRS multitask recipe's): one global shuffle with seed 42,
80,000 train / 20,000 test; top-k accuracy over all 1,682 movies with seen
movies kept, and RMSE. Protocol B (RecBole's): each user's ratings cut
8:1:1 with seed 42, full-catalogue ranking with train and validation items
removed, every test rating relevant; and RMSE. Protocol B's results also
hold the same metrics on its validation split (what configs are chosen on).
The split is fixed; the model seed (initialisation and shuffling) varies.
The popularity baseline (most-rated training movies first) is reported
beside the model.

Protocol T (not one of protocol.md's; for next-item models such as the
sequence tower): temporal leave-last-out, each user's latest rating is
test and the one before it validation, full-catalogue ranking of the unseen
movies (Hit@10 is Recall@10 with one relevant item).

    python benchmarks/protocols.py [--protocols A B] [--seeds 0 1 2]
        [--config FILE] [--set KEY=VALUE ...] [--output NAME]

`--config` starts from a config file (e.g. a search's best.yaml) rather
than the defaults; the protocol's split still overrides its split.

Writes protocol_a.json and protocol_b.json (or NAME_a.json, NAME_b.json,
...) in benchmarks/results (common.write_record).
"""

from __future__ import annotations

import argparse
import time
from typing import Optional

import numpy as np

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, training
from tfmtl.config import ExperimentConfig
from tfmtl.data import Split
from tfmtl.features import FeatureVocabulary

from common import format_summaries, summary, write_record

PROTOCOLS = {
    "A": (["split.protocol=random", "split.fractions=[0.8, 0.0, 0.2]"],
          {"top100_accuracy": "top100_accuracy", "top10_accuracy": "top10_accuracy",
           "rmse": "rating_rmse", "mae": "rating_mae", "like_auc": "like_auc"}),
    "B": (["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"],
          {**{f"{m}@{k}": f"{m}@{k}" for k in (10, 50, 100)
              for m in ("recall", "ndcg", "mrr", "hit")},
           "rmse": "rating_rmse", "mae": "rating_mae", "like_auc": "like_auc"}),
    "T": (["split.protocol=temporal"],
          {"hit@10": "hit@10", "ndcg@10": "ndcg@10", "mrr@10": "mrr@10",
           "hit@50": "hit@50", "rmse": "rating_rmse"}),
}


# What models are chosen on: the validation split, never the test split.
VALIDATION = {"recall@10": "recall@10", "ndcg@10": "ndcg@10", "rmse": "rating_rmse"}


def validation_metrics(model, prepared: training.Prepared) -> dict[str, float]:
  """Metrics on the validation split (only training items removed)."""
  return evaluation.evaluate_model(model, prepared.data,
                                   evaluation.on_validation(prepared.split), [10])


def protocol_config(name: str, seed: int, overrides: list[str],
                    base: Optional[ExperimentConfig] = None) -> ExperimentConfig:
  """`base` (default: the default config) on protocol `name`'s split with
  model seed `seed`."""
  return (base or ExperimentConfig()).with_overrides(
      [*PROTOCOLS[name][0], f"seed={seed}", *overrides])


def run_protocol(name: str, seeds: list[int], overrides: list[str],
                 config_file: Optional[str] = None, separate_domains: bool = False) -> dict:
  """Trains and evaluates one model per seed: the protocol's metrics, mean and std.

  A metric the model does not produce (RMSE without a rating task) is left out.
  `separate_domains` (with `data.domain_column`): one model per domain
  instead, each trained on its domain's training rows (`per_domain_fit`).
  """
  split_overrides, names = PROTOCOLS[name]
  base = ExperimentConfig.from_file(config_file) if config_file else None
  runs, validation_runs, seconds = [], [], []
  for seed in seeds:
    config = protocol_config(name, seed, overrides, base)
    prepared = training.prepare(config)
    start = time.perf_counter()
    if separate_domains:
      metrics, validation = per_domain_fit(config, prepared)
      seconds.append(time.perf_counter() - start)
      runs.append(metrics)
      validation_runs.append(validation)
    else:
      model = training.fit(config, prepared, verbose=0)
      seconds.append(time.perf_counter() - start)
      metrics = evaluation.evaluate_model(model, prepared.data, prepared.split, [10, 50, 100])
      runs.append(metrics)
      if len(prepared.split.validation):
        validation_runs.append(validation_metrics(model, prepared))
    print(f"protocol {name} seed {seed}: " + ", ".join(
        f"{short} {metrics[full]:.4f}" for short, full in names.items() if full in metrics),
        flush=True)
  popularity = evaluation.evaluate_popularity(prepared.data, prepared.split, [10, 50, 100])
  return {
      "protocol": name,
      "seeds": seeds,
      "config": {"base": config_file or "tfmtl defaults (configs/movielens_100k.yaml)",
                 "overrides": [*split_overrides, *overrides]},
      "metrics": {short: summary([m[full] for m in runs]) for short, full in names.items()
                  if full in runs[0]},
      "validation_metrics": {short: summary([m[full] for m in validation_runs])
                             for short, full in VALIDATION.items()
                             if validation_runs and full in validation_runs[0]},
      "fit_seconds": summary(seconds),
      "baselines": {"popularity": {short: popularity[full] for short, full in names.items()
                                   if full in popularity}},
  }


def per_domain_fit(config: ExperimentConfig, prepared: training.Prepared
                   ) -> tuple[dict[str, float], dict[str, float]]:
  """One model per domain of `prepared` (trained on that domain's training
  rows, vocabularies from them, over the whole catalogue), evaluated on its
  domain's test and validation rows; the metrics of all domains combined
  as one model's would be: per-user metrics weighted by each domain's
  evaluated users (for user-level domains, such as a user column, that is
  exact), RMSE and MAE by its rows. AUC does not combine, and is left out."""
  test, validation = [], []
  for domain in prepared.vocabulary.domains:
    split = Split(*(part[part["domain"] == domain] for part in prepared.split))
    vocabulary = FeatureVocabulary.build(prepared.data, split.train, config.history_length)
    own = prepared._replace(split=split, vocabulary=vocabulary)
    model = training.fit(config, own, verbose=0)
    test.append((split.test, evaluation.evaluate_model(model, prepared.data, split,
                                                       [10, 50, 100])))
    validation.append((split.validation, validation_metrics(model, own)))
  return _combined(test), _combined(validation)


def _combined(parts: list[tuple]) -> dict[str, float]:
  """`per_domain_fit`'s combination of (rows, metrics) per domain."""
  users = np.array([rows["user_id"].nunique() for rows, _ in parts], float)
  counts = np.array([len(rows) for rows, _ in parts], float)
  combined = {}
  for metric in parts[0][1]:
    values = np.array([metrics[metric] for _, metrics in parts])
    if metric.endswith("_rmse"):
      combined[metric] = float(np.sqrt(np.average(values ** 2, weights=counts)))
    elif metric.endswith("_mae") or metric.endswith("_accuracy"):
      combined[metric] = float(np.average(values, weights=counts))
    elif "@" in metric:
      combined[metric] = float(np.average(values, weights=users))
  return combined


def write_protocol(name: str, result: dict, directory=None):
  """Writes run_protocol's `result` as the record `name`: the protocol and config
  are its settings, the metrics its results."""
  settings = {key: result[key] for key in ("protocol", "config")}
  results = {key: value for key, value in result.items()
             if key not in settings and key != "seeds"}
  return write_record(name, settings, results, result["seeds"], directory)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--protocols", nargs="+", default=["A", "B"], choices=list(PROTOCOLS))
  parser.add_argument("--config", help="a config file to start from (default: the defaults)")
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--output", default="protocol",
                      help="results are written to <output>_<protocol>.json")
  args = parser.parse_args()
  for name in args.protocols:
    result = run_protocol(name, args.seeds, args.set, args.config)
    path = write_protocol(f"{args.output}_{name.lower()}", result)
    print(f"protocol {name}: {format_summaries(result['metrics'])} -> {path}")


if __name__ == "__main__":
  main()
