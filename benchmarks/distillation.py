"""Distillation from EASE into the default and the compact two-tower model.

Protocol B's split (per user 8:1:1, seed 42). The teacher is EASE (L2 250,
`distillation.teacher: ease`), fitted on the training split; the students
learn its ranking of each user's unseen items through the listwise term
(`distillation.listwise_weight`, `listwise_temperature`; the recipe below
was chosen on protocol B's validation split, docs/benchmark-notes.md) beside
their own losses. Rows:

- `teacher_ease`: EASE itself, scored as a retrieval model (no rating task);
- `student_ease_kd` / `student_plain`: the default joint model (retrieval,
  rating and like over 32-d towers) with and without the teacher;
- `compact_ease_kd` / `compact_plain`: protocol E's compact student (at most
  1/8 of the default model's parameters) with and without it;
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

import pandas as pd

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, training
from tfmtl.config import ExperimentConfig
from tfmtl.data import Split
from tfmtl.features import FeatureVocabulary
from tfmtl.teachers import EaseTeacher

from common import format_summaries, summary, write_record
from protocol_e import STUDENT as COMPACT

SPLIT = ["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"]
EASE_LAMBDA = 250.0
RECIPE = ["distillation.teacher=ease", f"distillation.ease_lambda={EASE_LAMBDA}",
          "distillation.listwise_weight=5", "distillation.listwise_temperature=0.1"]
# row -> (teacher, student, overrides)
ROWS = {"student_ease_kd": ("ease", "default", RECIPE),
        "student_plain": (None, "default", []),
        "compact_ease_kd": ("ease", "compact", [*COMPACT, *RECIPE]),
        "compact_plain": (None, "compact", COMPACT),
        "student_ease_kd_refit": ("ease", "default", RECIPE),
        "student_plain_refit": (None, "default", [])}
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  by_row = {"teacher_ease": [], "teacher_ease_refit": [], **{name: [] for name in ROWS}}
  for seed in args.seeds:
    for name, (_, _, overrides) in ROWS.items():
      refit = name.endswith("_refit")
      config = ExperimentConfig().with_overrides(
          [*SPLIT, f"seed={seed}", *overrides, *(["train.validate_every=0"] if refit else [])])
      prepared = training.prepare(config)
      prepared = _refit(prepared, config) if refit else prepared
      model = training.fit(config, prepared, verbose=0)
      by_row[name].append(_row(model, prepared, model.count_params()))
      if name.startswith("student_ease_kd"):
        teacher = model.distillation.teacher
        items = int(teacher.score_matrix.shape[1])
        by_row[name.replace("student_ease_kd", "teacher_ease")].append(
            _row(teacher, prepared, items * (items - 1)))
      print(f"{name} seed {seed}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in by_row[name][-1].items() if k != "params"), flush=True)
  kinds = {"teacher_ease": (None, None, []), "teacher_ease_refit": (None, None, []), **ROWS}
  rows = [{"config": name, "teacher": kinds[name][0], "student": kinds[name][1],
           "fit_on": "train+validation" if name.endswith("_refit") else "train",
           "params": results[0]["params"],
           "metrics": {k: summary([r[k] for r in results])
                       for k in results[0] if k != "params"}}
          for name, results in by_row.items()]
  path = write_record("distillation", {"protocol": "B", "recipe": RECIPE, "compact": COMPACT},
                      {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['config']:<16} params {row['params']:>9}  {format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
