"""Splits are deterministic for a seed, disjoint, and cut the way they say."""

import numpy as np
import pandas as pd
import pytest

from tfmtl.config import SplitConfig
from tfmtl.data import DataError, per_user_split, random_split, split_interactions
from tfmtl.data import temporal_split
from tfmtl.data.splits import _split_counts, _take, cold_item_split, held_out_candidates


def _keys(frame: pd.DataFrame) -> set:
  return set(zip(frame["user_id"], frame["item_id"]))


@pytest.mark.parametrize("make_split", [
    lambda df, seed: random_split(df, (0.8, 0.0, 0.2), seed),
    lambda df, seed: per_user_split(df, (0.8, 0.1, 0.1), seed),
])
def test_same_seed_same_split_other_seed_other_split(movielens, make_split):
  interactions = movielens.interactions
  first, again, other = (make_split(interactions, s) for s in (42, 42, 7))
  for part in range(3):
    assert first[part].equals(again[part])
  assert not first.test.equals(other.test)


@pytest.mark.parametrize("protocol", ["random", "per_user", "temporal", "cold_items"])
def test_parts_are_disjoint_and_cover_every_interaction(movielens, protocol):
  interactions = movielens.interactions
  split = split_interactions(interactions, SplitConfig(protocol=protocol))
  parts = [_keys(p) for p in split]
  assert sum(len(p) for p in split) == len(interactions)
  assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_protocol_a_split_is_80k_train_20k_test(movielens):
  split = random_split(movielens.interactions, (0.8, 0.0, 0.2), seed=42)
  assert (len(split.train), len(split.validation), len(split.test)) == (80_000, 0, 20_000)


def test_per_user_split_cuts_every_user_8_1_1(movielens):
  split = per_user_split(movielens.interactions)
  sizes = pd.DataFrame({name: part.groupby("user_id").size()
                        for name, part in zip(("train", "validation", "test"), split)})
  total = sizes.sum(axis=1)
  assert (sizes["test"] == (total * 0.1).astype(int)).all()  # RecBole's floor
  assert (sizes["validation"] == (total * 0.1).astype(int)).all()
  assert (sizes["train"] > 0).all()


def _per_user_split_user_by_user(interactions, fractions, seed):
  """The definition, one user at a time: the rows in one seeded shuffle,
  each user's (in the shuffled order) cut by `_split_counts`."""
  order = np.random.default_rng(seed).permutation(len(interactions))
  users = interactions["user_id"].to_numpy()[order]
  parts = [[], [], []]
  for user in sorted(set(users)):
    rows = order[users == user]
    ends = np.cumsum(_split_counts(len(rows), fractions))
    for part, (start, end) in enumerate(zip([0, *ends[:-1]], ends)):
      parts[part].extend(rows[start:end])
  return _take(interactions, *(np.array(p, dtype=int) for p in parts))


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5)])
def test_per_user_split_is_its_definition_user_by_user(fractions):
  # Power-law users: many with 1 to 3 rows, where _split_counts's rounding bites.
  rng = np.random.default_rng(0)
  users = rng.zipf(1.5, 4000).astype(str)
  interactions = pd.DataFrame({"user_id": users, "item_id": np.arange(4000).astype(str)})
  for seed in (1, 42):
    for got, expected in zip(per_user_split(interactions, fractions, seed),
                             _per_user_split_user_by_user(interactions, fractions, seed)):
      pd.testing.assert_frame_equal(got, expected)


def test_temporal_split_holds_out_each_users_latest_interactions(movielens):
  split = temporal_split(movielens.interactions)
  assert split.test["user_id"].is_unique and len(split.test) == 943
  latest_train = split.train.groupby("user_id")["timestamp"].max()
  validation = split.validation.set_index("user_id")["timestamp"]
  test = split.test.set_index("user_id")["timestamp"]
  assert (latest_train <= validation.reindex(latest_train.index)).all()
  assert (validation <= test.reindex(validation.index)).all()


def test_the_temporal_split_does_not_depend_on_row_order_and_warns_of_ties(movielens, caplog):
  """On ML-100K, 44% of users' latest ratings share their second with the
  one before: reading the rows in another order (files of a glob, say)
  must not move any of them between the parts."""
  def parts(split):
    return [set(map(tuple, part[["user_id", "item_id"]].to_numpy())) for part in split]
  split = temporal_split(movielens.interactions)
  shuffled = movielens.interactions.sample(frac=1.0, random_state=7)
  assert parts(temporal_split(shuffled)) == parts(split)
  assert parts(temporal_split(shuffled.iloc[::-1])) == parts(split)
  assert "of 943 users' latest interactions tie in time" in caplog.text
  caplog.clear()
  temporal_split(pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"],
                               "timestamp": [1, 2]}))
  assert "tie in time" not in caplog.text  # nothing ties


def test_temporal_split_needs_timestamps():
  with pytest.raises(DataError, match="split.protocol: temporal needs a 'timestamp' column"):
    temporal_split(pd.DataFrame({"user_id": ["a"], "item_id": ["b"]}))


def test_cold_item_split_holds_out_whole_items(movielens):
  interactions = movielens.interactions
  split = cold_item_split(interactions, (0.8, 0.1, 0.1), seed=42)
  items = [set(part["item_id"]) for part in split]
  assert not items[0] & items[1] and not items[0] & items[2] and not items[1] & items[2]
  assert [len(i) for i in items] == [1346, 168, 168]  # of 1,682 movies
  assert sum(len(part) for part in split) == len(interactions)
  assert cold_item_split(interactions, (0.8, 0.1, 0.1), seed=42).test.equals(split.test)
  # validation movies come out of training's share: the test movies stay those of (0.9, 0, 0.1)
  assert cold_item_split(interactions, (0.9, 0.0, 0.1), seed=42).test.equals(split.test)
  config = SplitConfig(protocol="cold_items")
  assert set(held_out_candidates(config, split.test)) == items[2]
  assert held_out_candidates(SplitConfig(protocol="per_user"), split.test) is None

