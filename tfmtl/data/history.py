"""The `history` feature: each example's most recent earlier interactions.

For an interaction (user, timestamp), its history is the items of that
user's *training* interactions with a timestamp strictly before it, most
recent first, at most `length` of them, joined by `|` (the raw form a
client sends to an export). Nothing at or after the example's timestamp,
and nothing from the validation or test splits, is ever in it.

`add_history(split, length)` adds the column to every part of a split;
`latest_history(train, user_ids, length)` is each user's history after all
of their training interactions (what a served query sees).

Example:

>>> import pandas as pd
>>> from tfmtl.data.history import add_history_column
>>> train = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["a", "b", "c"],
...                       "timestamp": [1, 2, 3]})
>>> add_history_column(train, train, length=2)["history"].tolist()
['', 'a', 'b|a']
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from tfmtl.data.schema import (HISTORY, HISTORY_SEPARATOR, ITEM_ID, TIMESTAMP, USER_ID,
                               DataError)
from tfmtl.data.splits import Split


def _items_before(train: pd.DataFrame, user_ids: np.ndarray, timestamps: np.ndarray,
                  length: int) -> np.ndarray:
  """Joined history strings for (user, timestamp) queries, vectorised."""
  users = pd.Index(pd.unique(np.concatenate([train[USER_ID].to_numpy(object),
                                             np.asarray(user_ids, object)])))
  times = np.unique(np.concatenate([train[TIMESTAMP].to_numpy(np.float64),
                                    np.asarray(timestamps, np.float64)]))
  stride = len(times) + 1

  def keys(user_column, time_column):
    return (users.get_indexer(user_column).astype(np.int64) * stride
            + np.searchsorted(times, np.asarray(time_column, np.float64)))

  train_keys = keys(train[USER_ID].to_numpy(object), train[TIMESTAMP].to_numpy())
  order = np.argsort(train_keys, kind="stable")
  train_keys = train_keys[order]
  train_items = train[ITEM_ID].to_numpy(object)[order]
  query_users = users.get_indexer(np.asarray(user_ids, object)).astype(np.int64)
  ends = np.searchsorted(train_keys, keys(user_ids, timestamps), side="left")
  starts = np.searchsorted(train_keys, query_users * stride, side="left")
  joined = np.full(len(ends), "", dtype=object)
  for back in range(1, length + 1):  # the valid positions shrink as we go back
    position = ends - back
    valid = np.flatnonzero(position >= starts)
    if not len(valid):
      break
    items = train_items[position[valid]]
    joined[valid] = items if back == 1 else joined[valid] + HISTORY_SEPARATOR + items
  return joined


def _require_timestamps(frame: pd.DataFrame, what: str) -> None:
  if TIMESTAMP not in frame.columns:
    raise DataError(f"{what}: the history feature needs a {TIMESTAMP!r} column in "
                    "the interactions (set model.sequence.type to none without one)")


def add_history_column(train: pd.DataFrame, interactions: pd.DataFrame,
                       length: int) -> pd.DataFrame:
  """`interactions` with a `history` column built from `train` (module doc)."""
  _require_timestamps(train, "train interactions")
  _require_timestamps(interactions, "interactions")
  joined_ids = train[ITEM_ID].astype(str).str.contains(HISTORY_SEPARATOR, regex=False)
  if joined_ids.any():
    raise DataError(f"{ITEM_ID}: {train[ITEM_ID][joined_ids].iloc[0]!r} contains "
                    f"{HISTORY_SEPARATOR!r}, which separates the items of the history feature")
  history = _items_before(train, interactions[USER_ID].to_numpy(object),
                          interactions[TIMESTAMP].to_numpy(np.float64), length)
  return interactions.assign(**{HISTORY: history})


def add_history(split: Split, length: int) -> Split:
  """Adds the `history` column to train, validation and test, from train only."""
  return Split(*(add_history_column(split.train, part, length) for part in split))


def latest_history(train: pd.DataFrame, user_ids: Sequence[str], length: int) -> np.ndarray:
  """Each user's history after all of their training interactions."""
  _require_timestamps(train, "train interactions")
  return _items_before(train, np.asarray(user_ids, object),
                       np.full(len(user_ids), np.inf), length)
