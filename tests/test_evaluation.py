"""Evaluation metrics match hand-computed values (test_training checks that a
trained model beats popularity)."""

import numpy as np
import pandas as pd
import pytest

from tfmtl.data import Split
from tfmtl.evaluation import (PopularityScorer, ValidationMetrics, retrieval_metrics,
                              with_users)


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


class RandomScorer:
  """Each user's own random scores; integer scores make ties."""

  def __init__(self, catalogue, ties):
    self.catalogue = np.array(catalogue, dtype=object)
    self.ties = ties

  def scores(self, user_ids):
    rows = [np.random.default_rng(int(user[1:])) for user in user_ids]
    size = len(self.catalogue)
    return np.stack([r.integers(0, 4, size) if self.ties else r.normal(size=size)
                     for r in rows]).astype(np.float32)


def _metrics_user_by_user(scorer, split, ks, candidates=None):
  """The metrics' definitions, one user at a time (protocol.md)."""
  catalogue = list(scorer.catalogue)
  allowed = np.array([candidates is None or item in candidates for item in catalogue])
  max_k = min(max(ks), int(allowed.sum()))
  accuracy = {k: 0 for k in ks}
  sums = {f"{name}@{k}": 0.0 for k in ks
          for name in ("recall", "ndcg", "mrr", "hit", "precision", "f1")}
  users = sorted(set(split.test["user_id"]))
  for user in users:
    scores = np.where(allowed, scorer.scores([user])[0], -np.inf)
    order = np.argsort(-scores, kind="stable")  # ties: the earlier column first
    tests = split.test.loc[split.test["user_id"] == user, "item_id"]
    for item in tests[tests.isin(catalogue)]:  # protocol A: nothing removed
      for k in ks:
        accuracy[k] += scores[catalogue.index(item)] >= scores[order[min(k, max_k) - 1]]
    seen = pd.concat([split.train, split.validation])
    seen = set(seen.loc[seen["user_id"] == user, "item_id"])
    scores = np.where([item in seen for item in catalogue], -np.inf, scores)
    top = [catalogue[c] for c in np.argsort(-scores, kind="stable")[:max_k]]
    for k in ks:
      hits = np.array([item in set(tests) for item in top[:k]])
      discounts = 1 / np.log2(np.arange(2, len(hits) + 2))
      sums[f"recall@{k}"] += hits.sum() / len(tests)
      sums[f"ndcg@{k}"] += (discounts * hits).sum() / discounts[:len(tests)].sum()
      sums[f"mrr@{k}"] += 1 / (np.argmax(hits) + 1) if hits.any() else 0.0
      sums[f"hit@{k}"] += hits.any()
      precision, recall = hits.sum() / k, hits.sum() / len(tests)
      sums[f"precision@{k}"] += precision
      sums[f"f1@{k}"] += 2 * precision * recall / (precision + recall) if hits.any() else 0.0
  metrics = {f"top{k}_accuracy": accuracy[k] / len(split.test) for k in ks}
  metrics.update({name: total / len(users) for name, total in sums.items()})
  return metrics


@pytest.mark.parametrize("seed", range(8))
def test_batched_metrics_equal_their_definitions_user_by_user(seed):
  # Ties, items the catalogue lacks, repeated interactions, users with no
  # history, candidates, k past the catalogue, batches of a few users.
  rng = np.random.default_rng(seed)
  catalogue = [f"i{j}" for j in range(int(rng.integers(5, 60)))]
  num_users = int(rng.integers(1, 30))

  def interactions(count):
    return _frame(zip([f"u{u}" for u in rng.integers(0, num_users, count)],
                      [f"i{i}" for i in rng.integers(0, len(catalogue) + 3, count)]))

  split = Split(interactions(int(rng.integers(0, 300))), interactions(int(rng.integers(0, 40))),
                interactions(int(rng.integers(1, 60))))
  scorer = RandomScorer(catalogue, ties=seed % 2 == 0)
  ks = sorted({1, int(rng.integers(2, 12)), int(rng.integers(2, len(catalogue) + 5))})
  candidates = None if seed % 3 else list(rng.choice(catalogue, len(catalogue) // 2 + 1))
  batched = retrieval_metrics(scorer, split, ks, int(rng.integers(1, 8)), candidates)
  expected = _metrics_user_by_user(scorer, split, ks, candidates)
  assert batched == pytest.approx(expected, abs=1e-12)


def test_with_users_draws_the_users_once_and_keeps_their_interactions():
  users = [f"u{u}" for u in range(10)]
  split = Split(_frame([(u, "a") for u in users]), _frame([(u, "b") for u in users]),
                _frame([(u, item) for u in users for item in "cd"]))
  drawn = with_users(split, 4, seed=1)
  kept = set(drawn.test["user_id"])
  assert len(kept) == 4 and len(drawn.test) == 8
  assert set(drawn.train["user_id"]) == set(drawn.validation["user_id"]) == kept
  assert with_users(split, 4, seed=1).test.equals(drawn.test)
  assert set(with_users(split, 4, seed=2).test["user_id"]) != kept
  assert with_users(split, 10, seed=1) is split and with_users(split, 0, seed=1) is split


def test_validation_metrics_score_at_most_max_users():
  users = [f"u{u}" for u in range(10)]
  split = Split(_frame([(u, "a") for u in users]), _frame([(u, "b") for u in users]), _frame([]))
  capped = ValidationMetrics(None, split, ks=[1], max_users=3, seed=0)
  assert capped.split.test["user_id"].nunique() == 3 and len(capped.split.validation) == 0
  assert ValidationMetrics(None, split, ks=[1]).split.test["user_id"].nunique() == 10


def test_popularity_ranks_by_training_counts():
  train = _frame([("u", "b"), ("v", "b"), ("v", "c")])
  scorer = PopularityScorer(train, np.array(list("abc"), dtype=object))
  assert scorer.scores(np.array(["x", "y"])).numpy().tolist() == [[0.0, 2.0, 1.0]] * 2


def test_auc_by_hand():
  from tfmtl.tasks import exact_auc
  assert exact_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
  assert exact_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
  assert np.isnan(exact_auc(np.array([1, 1]), np.array([0.2, 0.5])))


def test_a_classification_report_counts_each_value_by_hand():
  from tfmtl.tasks.classification import Classification
  names = ["(missing)", "a", "b", "c"]
  # one value per row: index 0 (missing) is never predicted, and unlabelled rows drop out
  logits = np.array([[9, 2, 1, 0], [0, 2, 1, 0], [0, 0, 3, 1], [0, 0, 1, 3], [0, 5, 0, 0]], float)
  labels = np.array([1, 1, 1, 3, 0])
  report = Classification.report(logits, labels, names)
  # rows: (a, a), (a, a), (a, b), (c, c); b is never true but predicted once
  assert set(report) == {"a", "b", "c", "accuracy", "macro avg", "weighted avg"}
  assert report["a"] == {"precision": 1.0, "recall": 2 / 3, "f1-score": 0.8, "support": 3}
  assert report["b"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
  assert Classification.summary(report) == {"micro_f1": 0.75,
                                            "macro_f1": pytest.approx((0.8 + 0 + 1) / 3)}
  # multi-hot labels: a sigmoid per value; the missing column is left out
  multi = Classification.report(np.array([[5, 1, -1, 1], [-5, -1, 1, -1]], float),
                                np.array([[1, 1, 0, 0], [0, 1, 1, 0]], float), names)
  assert (multi["a"]["precision"], multi["a"]["recall"], multi["a"]["support"]) == (1.0, 0.5, 2)
  assert multi["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
  assert multi["micro avg"]["precision"] == 2 / 3 and multi["micro avg"]["recall"] == 2 / 3
  assert Classification.summary(multi)["micro_f1"] == pytest.approx(2 / 3)


def test_the_ease_baseline_is_steck_2019_closed_form(tiny_data):
  from tfmtl.data import per_user_split
  from tfmtl.evaluation import evaluate_ease
  split = per_user_split(tiny_data.interactions, (0.8, 0.1, 0.1), seed=0)
  metrics, skipped = evaluate_ease(tiny_data, split, ks=[5], l2=10.0)
  assert skipped == ""
  users = pd.Index(pd.unique(split.train["user_id"]))
  catalogue = tiny_data.items["item_id"].to_numpy(object)
  x = np.zeros((len(users), len(catalogue)))
  x[users.get_indexer(split.train["user_id"]),
    pd.Index(catalogue).get_indexer(split.train["item_id"])] = 1.0
  p = np.linalg.inv(x.T @ x + 10.0 * np.eye(len(catalogue)))
  b = np.eye(len(catalogue)) - p / np.diag(p)[None, :]  # zero diagonal
  scores = pd.DataFrame(x @ b, index=users)

  class Direct:  # numpy's EASE scores, user by user
    def __init__(self):
      self.catalogue = catalogue
    def scores(self, user_ids):
      return scores.reindex(user_ids, fill_value=0.0).to_numpy(np.float32)
  expected = retrieval_metrics(Direct(), split, ks=[5])
  assert metrics == pytest.approx(expected, abs=1e-6) and metrics["recall@5"] > 0
  assert evaluate_ease(tiny_data, split, ks=[5], max_items=10) == (
      {}, "40 items, more than evaluate.ease_max_items (10)")
