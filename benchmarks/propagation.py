"""Label propagation: its effect on light users, and its cost at 1M users.

Quality: protocol B (per user 8:1:1, seed 42), the default model with and
without `propagation.feature: genres` (k 10, alpha 0.8, labels from users
with >= 20 training ratings), 3 seeds. Metrics over all test users and over
the users with at most 20 training ratings.

Scale: 1,000,000 synthetic users (32-d vectors around 1,000 centres),
`knn_graph` (k 10, LSH: 8 tables, about 256 users per bucket) and
`spread_labels` over 18 labels known for half of them; seconds and peak
memory (ru_maxrss of this process).

    python benchmarks/propagation.py [--seeds 0 1 2] [--users 1000000]

Writes benchmarks/results/propagation.json.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, training
from tfmtl.config import ExperimentConfig
from tfmtl.data import Split
from tfmtl.propagation import knn_graph, spread_labels

from common import format_summaries, summary, write_record

SPLIT = ["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"]
ROWS = {"default": [], "propagated_genres": ["propagation.feature=genres"]}
LIGHT = 20
METRICS = ("recall@10", "ndcg@10")


def quality(seeds: list[int]) -> list[dict]:
  rows = []
  for name, overrides in ROWS.items():
    runs = []
    for seed in seeds:
      config = ExperimentConfig().with_overrides([*SPLIT, f"seed={seed}", *overrides])
      prepared = training.prepare(config)
      model = training.fit(config, prepared, verbose=0)
      train, validation, test = prepared.split
      counts = train["user_id"].value_counts()
      light = test[test["user_id"].map(counts).fillna(0) <= LIGHT]
      scorer = evaluation.ModelScorer(model, prepared.data, train)
      every = evaluation.retrieval_metrics(scorer, prepared.split, [10])
      few = evaluation.retrieval_metrics(scorer, Split(train, validation, light), [10])
      runs.append({**{f"all/{m}": every[m] for m in METRICS},
                   **{f"light/{m}": few[m] for m in METRICS}})
      print(f"{name} seed {seed}: {runs[-1]} ({light['user_id'].nunique()} light users)",
            flush=True)
    rows.append({"config": name, "overrides": [*SPLIT, *overrides],
                 "light_users": int(light["user_id"].nunique()),
                 "metrics": {k: summary([r[k] for r in runs]) for k in runs[0]}})
  return rows


def scale(users: int) -> dict:
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((1000, 32)).astype(np.float32)
  vectors = centres[rng.integers(1000, size=users)] + 0.5 * rng.standard_normal(
      (users, 32)).astype(np.float32)
  labels = rng.dirichlet(np.ones(18), size=users) * (rng.random((users, 1)) < 0.5)
  start = time.perf_counter()
  graph = knn_graph(vectors, k=10)
  graph_seconds = time.perf_counter() - start
  start = time.perf_counter()
  spread_labels(graph, labels)
  return {"users": users, "edges": int(graph.nnz), "knn_graph_seconds": graph_seconds,
          "spread_seconds": time.perf_counter() - start,
          "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--users", type=int, default=1_000_000)
  args = parser.parse_args()
  rows = quality(args.seeds)
  cost = scale(args.users)
  path = write_record("propagation", {"protocol": "B", "light_threshold": LIGHT,
                                      "users": args.users},
                      {"rows": rows, "scale": cost}, args.seeds)
  for row in rows:
    print(f"{row['config']:<18} {format_summaries(row['metrics'])}")
  print(f"scale: {cost}\n-> {path}")


if __name__ == "__main__":
  main()
