"""Synthetic interactions at any scale, with realistic skew and planted structure.

Users and items each belong to one of `num_tastes` hidden tastes. Item
popularity and user activity follow power laws (Zipf exponents
`item_skew`, `user_skew`), so a few items and users carry most
interactions, as in real logs. Each interaction picks its user by activity,
then, with probability `affinity`, an item of the user's taste by
popularity within that taste, else any item by popularity. Ratings are 4-5
for an item of the user's taste and 1-3 otherwise. A model that learns the
tastes beats popularity; the users' `segment` and the items' `taste`
feature reveal them only in part (`feature_noise` of them are random).

The interactions are generated and written chunk by chunk into Parquet
shards, so memory stays that of one chunk at any scale; the folder is
written under a temporary name and renamed when complete.

Example:

>>> import tempfile
>>> folder = write_synthetic(tempfile.mkdtemp() + "/synthetic", num_interactions=10_000,
...                          num_users=500, num_items=200, shards=2)
>>> sorted(path.name for path in folder.iterdir())
['interactions-00000-of-00002.parquet', 'interactions-00001-of-00002.parquet', 'items.parquet', 'users.parquet']
>>> from tfmtl.data import load_files
>>> data = load_files(folder / "interactions-*.parquet", folder / "users.parquet",
...                   folder / "items.parquet")
>>> len(data.interactions)
10000
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tfmtl import atomic


def data_config(folder: str | Path) -> dict:
  """The config's `data` section that reads `write_synthetic`'s files in `folder`.

  >>> data_config("synthetic")["interactions"]
  'synthetic/interactions-*.parquet'
  """
  folder = Path(folder)
  return {"source": "files", "interactions": str(folder / "interactions-*.parquet"),
          "users": str(folder / "users.parquet"), "items": str(folder / "items.parquet"),
          "user_features": {"segment": "categorical"},
          "item_features": {"taste": "categorical"}}


def write_synthetic(folder: str | Path, num_interactions: int, num_users: int,
                    num_items: int, num_tastes: int = 20, shards: int = 8,
                    affinity: float = 0.8, item_skew: float = 1.0, user_skew: float = 0.8,
                    feature_noise: float = 0.3, chunk_size: int = 1_000_000,
                    seed: int = 0) -> Path:
  """Writes `folder/interactions-*.parquet`, `users.parquet` and `items.parquet`.

  Columns: interactions `user_id`, `item_id` (strings `u<n>`, `i<n>`),
  `rating`, `timestamp` (the row's position); users `user_id`, `segment`;
  items `item_id`, `taste`. See the module doc for the generative story.
  """
  if min(num_interactions, num_users, num_items, num_tastes, shards, chunk_size) < 1:
    raise ValueError("write_synthetic: sizes, tastes, shards and chunk_size must be positive")
  if not 0 <= affinity <= 1 or not 0 <= feature_noise <= 1:
    raise ValueError("write_synthetic: affinity and feature_noise must be in [0, 1]")
  folder = Path(folder)
  if folder.exists():
    raise FileExistsError(f"{folder}: already exists; synthetic data is never overwritten")
  rng = np.random.default_rng(seed)
  user_taste = rng.integers(num_tastes, size=num_users)
  item_taste = rng.integers(num_tastes, size=num_items)
  user_cdf = _cdf(_zipf(num_users, user_skew, rng))
  item_weight = _zipf(num_items, item_skew, rng)
  item_cdf = _cdf(item_weight)
  by_taste = [np.flatnonzero(item_taste == taste) for taste in range(num_tastes)]
  taste_cdfs = [_cdf(item_weight[items]) if len(items) else None for items in by_taste]
  if folder.parent.exists() and not folder.parent.is_dir():
    raise NotADirectoryError(f"{folder.parent}: not a folder, so {folder} cannot be made")
  # Chunks of at most chunk_size rows, the same number for every shard.
  chunks_per_shard = -(-num_interactions // (shards * chunk_size))
  chunk_size = -(-num_interactions // (shards * chunks_per_shard))

  def write(staging: Path) -> None:
    writers = [None] * shards
    for start in range(0, num_interactions, chunk_size):
      size = min(chunk_size, num_interactions - start)
      chunk = _chunk(rng, start, size, user_cdf, item_cdf, user_taste, item_taste,
                     by_taste, taste_cdfs, affinity)
      shard = (start // chunk_size) % shards
      if writers[shard] is None:
        writers[shard] = pq.ParquetWriter(
            staging / f"interactions-{shard:05d}-of-{shards:05d}.parquet", chunk.schema)
      writers[shard].write_table(chunk)
    for shard, writer in enumerate(writers):
      if writer is None:  # fewer chunks than shards: an empty shard keeps the count
        pq.write_table(chunk.slice(0, 0),
                       staging / f"interactions-{shard:05d}-of-{shards:05d}.parquet")
      else:
        writer.close()
    pq.write_table(pa.table({"user_id": _ids("u", num_users),
                             "segment": _noisy_tokens("s", user_taste, feature_noise, rng)}),
                   staging / "users.parquet")
    pq.write_table(pa.table({"item_id": _ids("i", num_items),
                             "taste": _noisy_tokens("t", item_taste, feature_noise, rng)}),
                   staging / "items.parquet")
  atomic.write_folder(folder, write)
  return folder


def _chunk(rng, start, size, user_cdf, item_cdf, user_taste, item_taste, by_taste,
           taste_cdfs, affinity) -> pa.Table:
  users = _draw(rng, user_cdf, size)
  items = _draw(rng, item_cdf, size)
  own = rng.random(size) < affinity
  for taste in np.unique(user_taste[users[own]]):
    if taste_cdfs[taste] is None:
      continue
    rows = np.flatnonzero(own & (user_taste[users] == taste))
    items[rows] = by_taste[taste][_draw(rng, taste_cdfs[taste], len(rows))]
  liked = user_taste[users] == item_taste[items]
  ratings = np.where(liked, rng.integers(4, 6, size), rng.integers(1, 4, size))
  return pa.table({"user_id": _ids("u", users), "item_id": _ids("i", items),
                   "rating": ratings.astype(np.float32),
                   "timestamp": np.arange(start, start + size, dtype=np.int64)})


def _zipf(n: int, exponent: float, rng) -> np.ndarray:
  """Power-law weights over `n` entities in a random order."""
  return rng.permutation(1.0 / np.arange(1, n + 1) ** exponent)


def _cdf(weights: np.ndarray) -> np.ndarray:
  return np.cumsum(weights) / weights.sum()


def _draw(rng, cdf: np.ndarray, size: int) -> np.ndarray:
  return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def _ids(prefix: str, numbers) -> pa.Array:
  numbers = np.arange(numbers) if np.isscalar(numbers) else numbers
  return pa.array(np.char.add(prefix, np.asarray(numbers).astype(str)))


def _noisy_tokens(prefix: str, tastes: np.ndarray, noise: float, rng) -> pa.Array:
  noisy = np.where(rng.random(len(tastes)) < noise,
                   rng.integers(tastes.max() + 1, size=len(tastes)), tastes)
  return _ids(prefix, noisy)
