"""Distillation from EASE and from tfmtl runs into the default and the compact two-tower model.

Protocol B's split (per user 8:1:1, seed 42). Three teachers, each fitted
on the training split: EASE (L2 250, `distillation.teacher: ease`), the
default joint model and a 4x wider one (tfmtl runs). The students learn a
teacher's ranking of each user's unseen items through the listwise term
(`distillation.listwise_weight`, `listwise_temperature`; the recipe below
was chosen on protocol B's validation split, docs/benchmark-notes.md) beside
their own losses. Rows (`teacher`: the teacher's row):

- `teacher_ease`: EASE itself, scored as a retrieval model (no rating task);
- `student_ease_kd` / `student_plain`: the default joint model (retrieval,
  rating and like over 32-d towers) with and without EASE;
- `compact_ease_kd` / `compact_plain`: protocol E's compact student (at most
  1/8 of the default model's parameters) with and without EASE;
- `student_default_kd`: the default model taught by a `student_plain` run of
  the same seed (the default model as its own teacher's size);
- `teacher_wide` / `student_wide_kd`: a joint model with 128-d ids and
  towers [256] (about 5x the default's parameters), and the default model
  taught by it;
- `*_refit`: teacher, default student and plain model fitted once more, the
  recipe unchanged, on the training and validation splits together (what
  EASE's published protocol-B figure is fitted on), scored on test.

Each row has its parameter count (EASE: its item-item weights) and, over the
seeds, Recall@10, NDCG@10 and the rating RMSE on test (and on validation,
except the refit rows, which trained on it).

    python benchmarks/distillation.py [--seeds 0 1 2]

Writes benchmarks/results/distillation.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, runs, training
from tfmtl.config import ExperimentConfig
from tfmtl.data import Split
from tfmtl.features import FeatureVocabulary
from tfmtl.teachers import EaseTeacher

from common import format_summaries, summaries, write_record
from protocol_e import STUDENT as COMPACT

SPLIT = ["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"]
EASE_LAMBDA = 250.0
LISTWISE = ["distillation.listwise_weight=5", "distillation.listwise_temperature=0.1"]
RECIPE = ["distillation.teacher=ease", f"distillation.ease_lambda={EASE_LAMBDA}", *LISTWISE]
WIDE = ["model.embedding_dim=128", "model.id_embedding_dim=128", "model.tower_layers=[256]"]
# Rows trained in this order, a run teacher's row before its students'.
# row -> (teacher row, student, overrides).
ROWS = {"student_ease_kd": ("teacher_ease", "default", RECIPE),
        "student_plain": (None, "default", []),
        "compact_ease_kd": ("teacher_ease", "compact", [*COMPACT, *RECIPE]),
        "compact_plain": (None, "compact", COMPACT),
        "student_default_kd": ("student_plain", "default", LISTWISE),
        "teacher_wide": (None, "wide", WIDE),
        "student_wide_kd": ("teacher_wide", "default", LISTWISE),
        "student_ease_kd_refit": ("teacher_ease_refit", "default", RECIPE),
        "student_plain_refit": (None, "default", [])}
TEACHER_RUNS = {"student_plain", "teacher_wide"}  # saved as runs, the teacher of later rows
METRICS = {"recall@10": "recall@10", "ndcg@10": "ndcg@10", "rmse": "rating_rmse"}


def _metrics(scorer_or_model, prepared, split) -> dict[str, float]:
  if isinstance(scorer_or_model, EaseTeacher):
    return evaluation.retrieval_metrics(scorer_or_model, split, [10])
  return evaluation.evaluate_model(scorer_or_model, prepared.data, split, [10])


def _refit(prepared: training.Prepared, config: ExperimentConfig) -> training.Prepared:
  """`prepared` with the validation split joined to the training split."""
  split = prepared.split
  joined = Split(pd.concat([split.train, split.validation], ignore_index=True),
                 split.validation.iloc[:0], split.test)
  return prepared._replace(split=joined, vocabulary=FeatureVocabulary.build(
      prepared.data, joined.train, config.history_length))


def _row(model, prepared, params: int) -> dict[str, float]:
  test = _metrics(model, prepared, prepared.split)
  result = {short: test[full] for short, full in METRICS.items() if full in test}
  if len(prepared.split.validation):
    validation = _metrics(model, prepared, evaluation.on_validation(prepared.split))
    result.update({f"validation_{short}": validation[full] for short, full in METRICS.items()
                   if full in validation})
  return {**result, "params": params}


def _train_seed(seed: int, run_folders: Path, by_row: dict[str, list]) -> None:
  """Trains every row of `ROWS` at `seed` and appends its results to `by_row`
  (EASE's rows from the EASE students' teacher); the teacher rows that are
  runs, and the checkpoints, are written under `run_folders`."""
  for name, (teacher, _, overrides) in ROWS.items():
    refit = name.endswith("_refit")
    if teacher in TEACHER_RUNS:
      overrides = [f"distillation.teacher={run_folders / f'{teacher}_{seed}'}", *overrides]
    config = ExperimentConfig().with_overrides(  # checkpoints in the temporary folder
        [*SPLIT, f"seed={seed}", f"train.run_dir={run_folders / 'run'}", *overrides,
         *(["train.validate_every=0"] if refit else [])])
    prepared = training.prepare(config)
    prepared = _refit(prepared, config) if refit else prepared
    model = training.fit(config, prepared, verbose=0)
    if name in TEACHER_RUNS:
      runs.save_run(run_folders / f"{name}_{seed}", config, prepared, model)
    by_row[name].append(_row(model, prepared, model.count_params()))
    if name.startswith("student_ease_kd"):
      ease = model.distillation.teacher
      items = int(ease.score_matrix.shape[1])
      by_row[name.replace("student_ease_kd", "teacher_ease")].append(
          _row(ease, prepared, items * (items - 1)))
    print(f"{name} seed {seed}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in by_row[name][-1].items() if k != "params"), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  by_row = {"teacher_ease": [], "teacher_ease_refit": [], **{name: [] for name in ROWS}}
  with tempfile.TemporaryDirectory(prefix="tfmtl_distillation_") as folder:
    for seed in args.seeds:
      _train_seed(seed, Path(folder), by_row)
  kinds = {"teacher_ease": (None, "ease", []), "teacher_ease_refit": (None, "ease", []), **ROWS}
  rows = [{"config": name, "teacher": kinds[name][0], "student": kinds[name][1],
           "fit_on": "train+validation" if name.endswith("_refit") else "train",
           "settings": kinds[name][2], "params": results[0]["params"],
           "metrics": summaries(results, skip=("params",))}
          for name, results in by_row.items()]
  path = write_record("distillation", {"protocol": "B", "recipe": RECIPE, "compact": COMPACT},
                      {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['config']:<16} params {row['params']:>9}  {format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
