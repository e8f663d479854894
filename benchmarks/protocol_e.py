"""Protocol E: distillation from the multi-task model into a 1/8-size student.

Protocol B's split (per user 8:1:1, seed 42). The teacher is the default
joint model (the best on validation, BENCHMARKS.md). The student spends its
budget (at most 1/8 of the teacher's parameters) on 8-d user ids and
mixed-dimension item ids (the 25% most rated items 8-d, the rest 1-d,
projected to 8: `model.id_embedding_blocks`), with 2-d feature embeddings,
an 8-d output, no hidden tower layers and 8-wide heads; this shape was
chosen on protocol B's validation split (BENCHMARKS.md). Rows:

- `teacher`: the default model;
- `student_kd`: the student trained with the teacher's soft losses
  (`distillation.teacher`, weight 1, temperature 2) beside its own;
- `student_plain`: the same student without the teacher;
- `student_pca`: the student whose id embeddings start at the teacher's on
  their principal axes (`distillation.initialize: pca`, weight 0);
- `student_pca_kd`: that start and the soft losses;
- `student_listwise`: the per-task soft losses and the listwise KL
  divergence over each user's unseen catalogue items (weight 5, both
  sides at temperature 0.1: the recipe `distillation.json` chose);
- `student_ease`: the student distilled from EASE with that listwise KL,
  the teacher the default model's config uses (`distillation.json`).

Each row also has its parameter count and the exported SavedModel's
`retrieve` latency at batch 1 (p50 over 200 calls after 20 warm-up calls,
loaded in this process).

    python benchmarks/protocol_e.py [--seeds 0 1 2]

Writes benchmarks/results/protocol_e.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, runs, training
from tfmtl.config import ExperimentConfig
from tfmtl.serving import export_model

from common import format_summaries, summary, write_record

SPLIT = ["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"]
STUDENT = ["model.embedding_dim=8", "model.id_embedding_dim=8",
           "model.id_embedding_blocks={item_id: [{share: 0.25, dim: 8}, {share: 0.75, dim: 1}]}",
           "model.feature_embedding_dim=2", "model.tower_layers=[]",
           "tasks.rating.layers=[8]", "tasks.like.layers=[8]"]
TEACHER = "distillation.teacher={teacher}"
LISTWISE = ["distillation.listwise_weight=5", "distillation.listwise_temperature=0.1"]
ROWS = {"teacher": [], "student_kd": [*STUDENT, TEACHER], "student_plain": STUDENT,
        "student_pca": [*STUDENT, TEACHER, "distillation.initialize=pca",
                        "distillation.weight=0"],
        "student_pca_kd": [*STUDENT, TEACHER, "distillation.initialize=pca"],
        "student_listwise": [*STUDENT, TEACHER, *LISTWISE],
        "student_ease": [*STUDENT, "distillation.teacher=ease", *LISTWISE]}
METRICS = {"ndcg@10": "ndcg@10", "recall@10": "recall@10", "rmse": "rating_rmse"}


def retrieve_p50_ms(model, folder: Path, prepared) -> float:
  served = tf.saved_model.load(str(export_model(model, folder, "latency")))
  retrieve = served.signatures["serving_default"]
  user = prepared.data.users.iloc[[0]]
  inputs = {name: tf.constant(user[name].to_numpy(np.float32 if name == "age" else str))
            for name in model.encoder.user_inputs}
  for _ in range(20):
    retrieve(**inputs)
  times = []
  for _ in range(200):
    start = time.perf_counter()
    retrieve(**inputs)
    times.append((time.perf_counter() - start) * 1000)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  by_row = {name: [] for name in ROWS}
  with tempfile.TemporaryDirectory() as folder:
    for seed in args.seeds:
      teacher_run = Path(folder) / f"teacher_{seed}"
      for name, overrides in ROWS.items():
        config = ExperimentConfig().with_overrides(
            [*SPLIT, f"seed={seed}", *(o.replace("{teacher}", str(teacher_run)) for o in overrides)])
        prepared = training.prepare(config)
        model = training.fit(config, prepared, verbose=0)
        if name == "teacher":
          runs.save_run(teacher_run, config, prepared, model)
        metrics = evaluation.evaluate_model(model, prepared.data, prepared.split, [10])
        result = {short: metrics[full] for short, full in METRICS.items()}
        result["params"] = model.count_params()
        result["retrieve_p50_ms"] = retrieve_p50_ms(model, Path(folder) / name, prepared)
        by_row[name].append(result)
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()),
              flush=True)
  teacher_ndcg = np.mean([r["ndcg@10"] for r in by_row["teacher"]])
  rows = [{"config": name, "params": results[0]["params"],
           "metrics": {k: summary([r[k] for r in results])
                       for k in [*METRICS, "retrieve_p50_ms"]},
           "ndcg@10_of_teacher": float(np.mean([r["ndcg@10"] for r in results]) / teacher_ndcg)}
          for name, results in by_row.items()]
  path = write_record("protocol_e", {"protocol": "E", "split": "B", "student": STUDENT},
                      {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['config']:<14} params {row['params']:>7}  {format_summaries(row['metrics'])}"
          f"  ({row['ndcg@10_of_teacher']:.1%} of the teacher's NDCG@10)")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
