"""Protocol C: cold-start items, ranked by what the candidate tower reads.

10% of MovieLens 100K's movies (split seed 42) are held out with all their
ratings; no training example holds them. Each test user's ratings of held-out
movies are the relevant set, and the candidates are the held-out movies only
(`split.protocol: cold_items`). Rows differ only in the item features:

- `random`: a uniformly random order (the floor);
- `ids_only`: item ids alone (every unseen id is the same OOV row, so its
  scores tie; ties are broken at random in every row);
- `genres`: ids, genres and release year (the default model's item features);
- `text`: ids and the all-MiniLM-L6-v2 vector of "{title} ({year})" (the
  title as MovieLens writes it);
- `text+genres`: ids, genres, year and the vector of "{title} ({year}). {genres}".

    python benchmarks/protocol_c.py [--seeds 0 1 2] [--rows ...]

Writes benchmarks/results/protocol_c.json; the model seed varies, the split
does not.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, training
from tfmtl.config import ExperimentConfig
from tfmtl.content import CONTENT
from tfmtl.data.splits import held_out_candidates
from tfmtl.features import FeatureVocabulary

from common import format_summaries, summary, write_record

SPLIT = ["split.protocol=cold_items", "split.fractions=[0.9, 0.0, 0.1]"]
ROWS = {  # name: (item features kept, config overrides)
    "ids_only": ((), []),
    "genres": (("genres", "year"), []),
    "text": ((CONTENT,), ["content.encoder=minilm", "content.text='{title} ({year})'"]),
    "text+genres": (("genres", "year", CONTENT),
                    ["content.encoder=minilm", "content.text='{title} ({year}). {genres}'"]),
}
METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


class RandomScorer:
  """Uniformly random scores (the floor every content model must clear)."""

  def __init__(self, catalogue: np.ndarray, seed: int):
    self.catalogue = catalogue
    self._rng = np.random.default_rng(seed)

  def scores(self, user_ids: np.ndarray) -> np.ndarray:
    return self._rng.random((len(user_ids), len(self.catalogue)), dtype=np.float32)


class TieBreakingScorer:
  """A model's scores with exact ties broken at random.

  Unseen ids share one OOV row, so an ids-only model gives every held-out
  item the same score; top-k would then pick them in catalogue order, which
  on MovieLens (ids in order of first rating) favours popular movies.
  """

  def __init__(self, scorer, seed: int):
    self.catalogue = scorer.catalogue
    self._scorer = scorer
    self._rng = np.random.default_rng(seed)

  def scores(self, user_ids: np.ndarray) -> np.ndarray:
    scores = np.asarray(self._scorer.scores(user_ids), np.float32)
    return scores + self._rng.random(scores.shape, dtype=np.float32) * 1e-4


def with_item_features(prepared: training.Prepared, kept) -> training.Prepared:
  """`prepared` whose model reads only the item features in `kept`."""
  data = dataclasses.replace(prepared.data, item_features={
      name: spec for name, spec in prepared.data.item_features.items() if name in kept})
  return training.Prepared(data, prepared.split,
                           FeatureVocabulary.build(data, prepared.split.train))


def run_row(name: str, seeds: list[int]) -> dict:
  kept, overrides = ROWS.get(name, ((), []))
  runs = []
  for seed in seeds:
    config = ExperimentConfig().with_overrides([*SPLIT, f"seed={seed}", *overrides])
    prepared = training.prepare(config)
    candidates = held_out_candidates(config.split, prepared.split.test)
    if name == "random":
      scorer = RandomScorer(prepared.data.items["item_id"].to_numpy(object), seed)
    else:
      prepared = with_item_features(prepared, kept)
      model = training.fit(config, prepared, verbose=0)
      scorer = TieBreakingScorer(evaluation.ModelScorer(model, prepared.data), seed)
    metrics = evaluation.retrieval_metrics(scorer, prepared.split, [10, 50],
                                           candidates=candidates)
    runs.append(metrics)
    print(f"{name} seed {seed}: " + ", ".join(f"{m} {metrics[m]:.4f}" for m in METRICS),
          flush=True)
  return {"config": name, "item_features": list(kept), "overrides": [*SPLIT, *overrides],
          "metrics": {m: summary([r[m] for r in runs]) for m in METRICS},
          "candidates": len(candidates), "test_interactions": len(prepared.split.test)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="+", default=["random", *ROWS],
                      choices=["random", *ROWS])
  args = parser.parse_args()
  rows = [run_row(name, args.seeds) for name in args.rows]
  path = write_record("protocol_c", {"protocol": "C"}, {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['config']:<12} {format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
