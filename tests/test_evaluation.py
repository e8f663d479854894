"""Evaluation metrics match hand-computed values (test_training checks that a
trained model beats popularity)."""

import numpy as np
import pandas as pd
import pytest

from tfmtl.data import Split
from tfmtl.evaluation import PopularityScorer, _auc, retrieval_metrics


class FixedScorer:
  """Every user gets the same given scores."""

  def __init__(self, catalogue, scores):
    self.catalogue = np.array(catalogue, dtype=object)
    self._scores = np.array(scores, dtype=np.float32)

  def scores(self, user_ids):
    return np.tile(self._scores, (len(user_ids), 1))


def _frame(pairs):
  return pd.DataFrame(pairs, columns=["user_id", "item_id"])


def test_full_ranking_metrics_by_hand():
  # Ranking of items: a > b > c > d > e. User u saw a; relevant: c and e.
  scorer = FixedScorer(list("abcde"), [5, 4, 3, 2, 1])
  split = Split(_frame([("u", "a")]), _frame([]), _frame([("u", "c"), ("u", "e")]))
  metrics = retrieval_metrics(scorer, split, ks=[2, 4])
  # Candidates after removing a: b, c, d, e -> hits at ranks 2 and 4.
  assert metrics["hit@2"] == 1.0 and metrics["recall@2"] == 0.5
  assert metrics["mrr@2"] == 0.5 and metrics["recall@4"] == 1.0
  ideal = 1 + 1 / np.log2(3)
  assert metrics["ndcg@2"] == pytest.approx((1 / np.log2(3)) / ideal)
  assert metrics["ndcg@4"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
  # Protocol A does not remove seen items: c is 3rd, e is 5th of a..e.
  assert metrics["top2_accuracy"] == 0.0 and metrics["top4_accuracy"] == 0.5


def test_validation_items_are_removed_too():
  scorer = FixedScorer(list("abc"), [3, 2, 1])
  split = Split(_frame([("u", "a")]), _frame([("u", "b")]), _frame([("u", "c")]))
  assert retrieval_metrics(scorer, split, ks=[1])["hit@1"] == 1.0


def test_candidates_limit_the_ranking_to_the_held_out_items():
  # a and b are better scored but are not candidates: c ranks first.
  scorer = FixedScorer(list("abcde"), [5, 4, 3, 2, 1])
  split = Split(_frame([("v", "a")]), _frame([]), _frame([("u", "d")]))
  everything = retrieval_metrics(scorer, split, ks=[1, 2])
  held_out = retrieval_metrics(scorer, split, ks=[1, 2], candidates=["c", "d"])
  assert everything["hit@2"] == 0.0
  assert held_out["hit@1"] == 0.0 and held_out["hit@2"] == 1.0 and held_out["mrr@2"] == 0.5


def test_metrics_average_over_users_with_test_items():
  scorer = FixedScorer(list("abc"), [3, 2, 1])
  split = Split(_frame([("v", "c")]), _frame([]), _frame([("u", "a"), ("w", "c")]))
  metrics = retrieval_metrics(scorer, split, ks=[1])
  assert metrics["recall@1"] == 0.5  # u hits a; w misses c


def test_popularity_ranks_by_training_counts():
  train = _frame([("u", "b"), ("v", "b"), ("v", "c")])
  scorer = PopularityScorer(train, np.array(list("abc"), dtype=object))
  assert scorer.scores(np.array(["x"])).tolist() == [[0.0, 2.0, 1.0]]


def test_auc_by_hand():
  assert _auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
  assert _auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
