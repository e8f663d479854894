"""The history feature: earlier training items only, most recent first."""

import pandas as pd
import pytest

from tfmtl.config import SplitConfig
from tfmtl.data import DataError, split_interactions
from tfmtl.data.history import add_history, add_history_column, latest_history


def brute_force_history(train: pd.DataFrame, user: str, timestamp: float, length: int):
  earlier = train[(train.user_id == user) & (train.timestamp < timestamp)]
  return earlier.sort_values("timestamp", kind="stable").item_id.tolist()[::-1][:length]


@pytest.mark.parametrize("protocol", ["per_user", "random", "temporal"])
def test_history_holds_only_training_items_strictly_before_the_example(movielens, protocol):
  split = add_history(split_interactions(movielens.interactions,
                                         SplitConfig(protocol=protocol)), length=20)
  train = split.train
  item_time = {(u, i): t for u, i, t in train[["user_id", "item_id", "timestamp"]].itertuples(
      index=False)}
  for part in split:
    for row in part.sample(300, random_state=0).itertuples(index=False):
      history = [item for item in row.history.split("|") if item]
      assert len(history) <= 20
      # Every item is one of the user's training interactions, strictly earlier.
      assert all(item_time[(row.user_id, item)] < row.timestamp for item in history)
      assert [(row.user_id, item) in item_time for item in history].count(False) == 0
      # ... and they are the most recent ones, newest first (ties keep row order).
      expected = brute_force_history(train, row.user_id, row.timestamp, 20)
      assert sorted(history) == sorted(expected)
      times = [item_time[(row.user_id, item)] for item in history]
      assert times == sorted(times, reverse=True)


def test_no_item_at_or_after_the_example_time_even_when_timestamps_tie():
  train = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"],
                        "timestamp": [1, 2, 2, 3]})
  queries = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "item_id": ["x"] * 4,
                          "timestamp": [1, 2, 4, 9]})
  history = add_history_column(train, queries, length=3)["history"].tolist()
  assert history[0] == "" and history[1] == "a"
  assert history[2].split("|")[0] == "d" and sorted(history[2].split("|")) == ["b", "c", "d"]
  assert history[3] == ""  # a user without training interactions


def test_latest_history_is_the_last_training_items():
  train = pd.DataFrame({"user_id": ["u", "u", "w"], "item_id": ["a", "b", "c"],
                        "timestamp": [5, 7, 1]})
  assert latest_history(train, ["u", "w", "new"], length=5).tolist() == ["b|a", "c", ""]


def test_history_needs_timestamps():
  train = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
  with pytest.raises(DataError, match=r"history feature needs a 'timestamp' column"):
    add_history_column(train, train, length=2)


def test_item_ids_with_the_separator_are_refused():
  train = pd.DataFrame({"user_id": ["u"], "item_id": ["a|b"], "timestamp": [1]})
  with pytest.raises(DataError, match=r"item_id: 'a\|b' contains '\|'"):
    add_history_column(train, train, length=2)
