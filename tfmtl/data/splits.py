"""Train / validation / test splits of interactions, deterministic for a seed.

- `random_split`: one global shuffle, cut by fractions (protocol A: the TFRS
  recipe's 80/20 with seed 42).
- `per_user_split`: each user's interactions shuffled and cut 8:1:1 the way
  RecBole cuts them (protocol B).
- `temporal_split`: leave-last-out; each user's latest interaction is test,
  the one before it validation.
- `cold_item_split`: items (not interactions) are shuffled and cut by
  fractions, and every interaction goes with its item, so validation and
  test items never occur in training (protocol C: cold-start items; rank
  them among the held-out items only, see `held_out_candidates`).

Example:

>>> import pandas as pd
>>> from tfmtl.data import random_split
>>> interactions = pd.DataFrame({"user_id": list("aabbcc"), "item_id": list("xyxyxy")})
>>> split = random_split(interactions, (0.5, 0.0, 0.5), seed=42)
>>> len(split.train), len(split.validation), len(split.test)
(3, 0, 3)
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from tfmtl.config import SplitConfig
from tfmtl.data.schema import ITEM_ID, TIMESTAMP, USER_ID, DataError

logger = logging.getLogger("tfmtl")


class Split(NamedTuple):
  """Disjoint train, validation and test interactions (validation may be empty)."""
  train: pd.DataFrame
  validation: pd.DataFrame
  test: pd.DataFrame


def _take(interactions: pd.DataFrame, *positions: np.ndarray) -> Split:
  return Split(*(interactions.iloc[np.sort(p)].reset_index(drop=True)
                 for p in positions))


def random_split(interactions: pd.DataFrame,
                 fractions: Sequence[float] = (0.8, 0.0, 0.2),
                 seed: int = 42) -> Split:
  """Shuffles all interactions once and cuts them by `fractions`."""
  order = np.random.default_rng(seed).permutation(len(interactions))
  n_train = int(round(fractions[0] * len(order)))
  n_validation = int(round(fractions[1] * len(order)))
  return _take(interactions, order[:n_train],
               order[n_train:n_train + n_validation],
               order[n_train + n_validation:])


def _split_counts(total: int, fractions: Sequence[float]) -> list[int]:
  """RecBole's `_calcu_split_ids`: floor the later parts, give them at least
  one interaction while the train part keeps more than one."""
  counts = [int(f * total) for f in fractions]
  counts[0] = total - sum(counts[1:])
  for i in range(1, len(fractions)):
    if counts[0] <= 1:
      break
    if 0 < fractions[-i] * total < 1:
      counts[-i] += 1
      counts[0] -= 1
  return counts


def per_user_split(interactions: pd.DataFrame,
                   fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 42) -> Split:
  """Shuffles each user's interactions and cuts them by `fractions`."""
  order = np.random.default_rng(seed).permutation(len(interactions))
  # Users as integer codes in their sorted order: a stable sort by code
  # groups the rows by user, in user order, still shuffled within a user.
  codes = pd.factorize(interactions[USER_ID], sort=True)[0][order]
  by_user = np.argsort(codes, kind="stable")
  order, codes = order[by_user], codes[by_user]
  sizes = np.bincount(codes)
  starts = np.cumsum(sizes) - sizes
  rank = np.arange(len(order)) - starts[codes]  # position within the user's rows
  # Where each user's parts end, from `_split_counts` once per distinct size.
  distinct, size_index = np.unique(sizes, return_inverse=True)
  ends = np.cumsum([_split_counts(int(size), fractions) for size in distinct], axis=1)
  ends = ends[size_index][codes]  # per row: its user's
  part = sum((rank >= ends[:, i]).astype(np.int8) for i in range(ends.shape[1] - 1))
  return _take(interactions, *(order[part == p] for p in range(3)))


def temporal_split(interactions: pd.DataFrame) -> Split:
  """Each user's last interaction is test, the one before it validation.

  Interactions at the same time are ordered by a hash of (user id, item
  id), so the split does not depend on the order of rows or files, and
  favours no item; a warning says when more than 1% of users' latest
  interactions tie. Users with fewer than three interactions keep the
  earlier ones in train.
  """
  if TIMESTAMP not in interactions.columns:
    raise DataError("split.protocol: temporal needs a 'timestamp' column in the "
                    "interactions (data.columns maps yours to it)")
  times, users = interactions[TIMESTAMP].to_numpy(), interactions[USER_ID].to_numpy()
  tie_break = pd.util.hash_pandas_object(interactions[[USER_ID, ITEM_ID]], index=False)
  order = np.lexsort((tie_break.to_numpy(), times, users))
  users, times = users[order], times[order]
  from_end = pd.Series(users).groupby(users).cumcount(ascending=False).to_numpy()
  size = pd.Series(users).groupby(users).transform("size").to_numpy()
  test = (from_end == 0) & (size >= 2)
  validation = (from_end == 1) & (size >= 3)
  _warn_of_ties(users, times, test)
  return _take(interactions, order[~test & ~validation], order[validation],
               order[test])


def _warn_of_ties(users: np.ndarray, times: np.ndarray, test: np.ndarray) -> None:
  """Warns when over 1% of users' test interactions share their time with
  the interaction before them (rows sorted by user, then time)."""
  tied = test[1:] & (users[1:] == users[:-1]) & (times[1:] == times[:-1])
  if tied.sum() > 0.01 * test.sum():
    logger.warning("split.protocol temporal: %d of %d users' latest interactions tie in time "
                   "with the one before; which is test is decided by a hash of (user id, "
                   "item id), the same whatever the order of rows and files",
                   tied.sum(), test.sum())


def cold_item_split(interactions: pd.DataFrame,
                    fractions: Sequence[float] = (0.9, 0.0, 0.1),
                    seed: int = 42) -> Split:
  """Shuffles the items and cuts them by `fractions`; interactions follow their item."""
  items = np.sort(pd.unique(interactions[ITEM_ID].to_numpy(object)).astype(str))
  order = np.random.default_rng(seed).permutation(len(items))
  n_train = int(round(fractions[0] * len(items)))
  n_validation = int(round(fractions[1] * len(items)))
  part_of_item = pd.Series(np.zeros(len(items), np.int64), index=items[order])
  part_of_item.iloc[n_train:n_train + n_validation] = 1
  part_of_item.iloc[n_train + n_validation:] = 2
  part = part_of_item.reindex(interactions[ITEM_ID].astype(str)).to_numpy()
  return _take(interactions, *(np.flatnonzero(part == p) for p in range(3)))


def held_out_candidates(config: SplitConfig, held_out: pd.DataFrame) -> Optional[np.ndarray]:
  """The items a model ranks for `held_out` (a split's validation or test).

  None (the whole catalogue) except under `cold_items`, where the candidates
  are the held-out items only (protocol C).
  """
  if config.protocol != "cold_items":
    return None
  return pd.unique(held_out[ITEM_ID].to_numpy(object))


PROTOCOLS = ("random", "per_user", "temporal", "cold_items", "given")  # `split.protocol`


def split_interactions(interactions: pd.DataFrame, config: SplitConfig,
                       given_split: Sequence[int] = ()) -> Split:
  """The split a `SplitConfig` names; `given`: the interactions' first
  `given_split[0]` rows are train, the next `given_split[1]` validation and
  the rest test (`InteractionData.given_split`)."""
  if config.protocol == "given":
    if len(given_split) != 3 or sum(given_split) != len(interactions):
      raise DataError("split.protocol: given needs the interactions as data.train, "
                      "data.validation (optional) and data.test files")
    ends = np.cumsum(given_split)
    return _take(interactions, *np.split(np.arange(len(interactions)), ends[:2]))
  if config.protocol == "random":
    return random_split(interactions, config.fractions, config.seed)
  if config.protocol == "cold_items":
    return cold_item_split(interactions, config.fractions, config.seed)
  if config.protocol == "per_user":
    return per_user_split(interactions, config.fractions, config.seed)
  return temporal_split(interactions)
