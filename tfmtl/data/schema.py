"""The in-memory data model: interactions plus user and item feature tables.

Every source (offline MovieLens, TFDS, local files) ends in an
`InteractionData`, checked by `InteractionData.from_frames`:

- interactions: `user_id`, `item_id` (strings), optional `rating` (float32)
  and `timestamp` (int64), plus any numeric label columns; a numeric
  `sample_weight` column, if present, weights each interaction's losses
  (as Keras' `sample_weight` does; sample-based transfer sets it);
- users / items: one row per id, with the feature columns named in
  `user_features` / `item_features` (a `FeatureConfig` each); other columns
  (e.g. titles) are kept as they are.

Bad input raises `DataError` naming the file, the column and the first bad
row (data rows counted from 1, header excluded). Ids that appear in the
interactions but not in a feature table only warn: their features are
missing and map to the out-of-vocabulary bucket.

Example:

>>> import pandas as pd
>>> from tfmtl.data import InteractionData
>>> data = InteractionData.from_frames(
...     pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"],
...                   "rating": [4, 5]}))
>>> data.interactions.rating.dtype, len(data.items)
(dtype('float32'), 1)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tfmtl.config import FeatureConfig

USER_ID, ITEM_ID, RATING, TIMESTAMP = "user_id", "item_id", "rating", "timestamp"
# The user's earlier items, `|`-joined, added by `tfmtl.data.history`.
HISTORY, HISTORY_SEPARATOR = "history", "|"
SAMPLE_WEIGHT = "sample_weight"

logger = logging.getLogger("tfmtl")


class DataError(ValueError):
  """Input data is malformed; the message names the file, column and row."""


@dataclasses.dataclass
class InteractionData:
  """Interactions with their user and item feature tables (see module doc)."""
  interactions: pd.DataFrame
  users: pd.DataFrame
  items: pd.DataFrame
  user_features: dict[str, FeatureConfig]
  item_features: dict[str, FeatureConfig]
  name: str = "data"

  @classmethod
  def from_frames(cls,
                  interactions: pd.DataFrame,
                  users: Optional[pd.DataFrame] = None,
                  items: Optional[pd.DataFrame] = None,
                  user_features: Optional[dict[str, FeatureConfig]] = None,
                  item_features: Optional[dict[str, FeatureConfig]] = None,
                  sources: Optional[dict[str, str]] = None,
                  name: str = "data") -> "InteractionData":
    """Validates and normalises frames whose columns use the canonical names.

    Args:
      interactions: one row per interaction.
      users, items: feature tables (default: ids only, from the interactions).
      user_features, item_features: feature columns and their encoding.
      sources: where each frame came from (file paths), used in errors.
      name: a name for messages and reports.
    """
    sources = {"interactions": "interactions", "users": "users",
               "items": "items", **(sources or {})}
    user_features, item_features = user_features or {}, item_features or {}
    interactions = _check_interactions(interactions, sources["interactions"])
    users = _check_features(users, USER_ID, user_features, interactions,
                            sources["users"])
    items = _check_features(items, ITEM_ID, item_features, interactions,
                            sources["items"])
    return cls(interactions, users, items, user_features, item_features, name)

  @property
  def label_columns(self) -> list[str]:
    """Numeric interaction columns a task can predict (e.g. `rating`)."""
    return [c for c in self.interactions.columns
            if c not in (USER_ID, ITEM_ID, TIMESTAMP, HISTORY, SAMPLE_WEIGHT)]

  def examples(self, interactions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw feature and label arrays, one row per interaction.

    `interactions` is this data's interactions or a split of them; user and
    item features are joined on by id. A `history` column (see
    `tfmtl.data.history`) is kept.
    """
    own = self.interaction_columns(interactions)
    frame = interactions[own]
    frame = frame.merge(self.users[[USER_ID, *self.user_features]], on=USER_ID,
                        how="left", validate="many_to_one")
    frame = frame.merge(self.items[[ITEM_ID, *self.item_features]], on=ITEM_ID,
                        how="left", validate="many_to_one")
    return table_arrays(frame, [*own, *self.user_features, *self.item_features],
                        vector_dims({**self.user_features, **self.item_features}))

  def interaction_columns(self, interactions: pd.DataFrame) -> list[str]:
    """The columns of `interactions` an example keeps: ids, labels, and the
    sample weight and history where present."""
    return [USER_ID, ITEM_ID, *self.label_columns,
            *(c for c in (SAMPLE_WEIGHT, HISTORY) if c in interactions.columns)]

  def summary(self) -> str:
    return (f"{self.name}: {len(self.interactions):,} interactions, "
            f"{self.interactions[USER_ID].nunique():,} users, "
            f"{self.interactions[ITEM_ID].nunique():,} items rated of "
            f"{len(self.items):,} in the catalogue")


def table_arrays(frame: pd.DataFrame, columns: list[str],
                 vector_dims: Optional[dict[str, int]] = None) -> dict[str, np.ndarray]:
  """Columns as numpy arrays TensorFlow accepts: strings as object arrays,
  `vector` features (named in `vector_dims`) as float32 [rows, dim], missing
  rows zero."""
  arrays = {}
  for column in columns:
    values = frame[column]
    if column in (vector_dims or {}):
      zeros = np.zeros(vector_dims[column], np.float32)
      arrays[column] = np.stack([v if isinstance(v, np.ndarray) else zeros
                                 for v in values]) if len(values) else np.zeros(
                                     [0, vector_dims[column]], np.float32)
    elif pd.api.types.is_numeric_dtype(values):
      arrays[column] = values.to_numpy(dtype=np.float32)
    else:  # pandas 3 strings are a StringDtype that TensorFlow rejects; missing is ""
      arrays[column] = values.fillna("").to_numpy(dtype=object)
  return arrays


def vector_dims(features: dict[str, FeatureConfig]) -> dict[str, int]:
  """The `vector` features' widths, by name."""
  return {name: spec.dim for name, spec in features.items() if spec.type == "vector"}


def ids_in(ids: pd.Series, known) -> np.ndarray:
  """`ids.isin(known)` for string ids, by Arrow's hash set: pandas' `isin`
  on Arrow strings turns each known id into a Python object (7 s of 14
  with 1M items and 20M interactions)."""
  return pc.is_in(pa.array(ids, pa.large_string()),
                  value_set=pa.array(known, pa.large_string())).to_numpy(zero_copy_only=False)


def _first_bad(mask: pd.Series, frame: pd.DataFrame, column: str) -> str:
  position = int(np.flatnonzero(mask.to_numpy())[0])
  return f"first at row {position + 1}: {frame[column].iloc[position]!r}"


def _require_columns(frame: pd.DataFrame, columns, source: str):
  missing = [c for c in columns if c not in frame.columns]
  if missing:
    raise DataError(f"{source}: missing required column(s) {missing}; "
                    f"found {list(frame.columns)}")


def _ids(frame: pd.DataFrame, column: str, source: str) -> pd.api.extensions.ExtensionArray:
  values = frame[column]
  missing = values.isna() | (values.astype(str).str.strip() == "")
  if missing.any():
    raise DataError(f"{source}: column {column!r} has empty ids "
                    f"({int(missing.sum())} rows, {_first_bad(missing, frame, column)})")
  if pd.api.types.is_float_dtype(values) and (values % 1 == 0).all():
    values = values.astype(np.int64)  # 17.0 -> "17"
  return values.astype(str).array  # strings stay Arrow's: no copy to Python objects


def _numbers(frame: pd.DataFrame, column: str, source: str, dtype) -> np.ndarray:
  raw = frame[column]
  numbers = pd.to_numeric(raw, errors="coerce")
  bad = numbers.isna()
  if bad.any():
    blank = raw[bad].isna() | (raw[bad].astype(str).str.strip() == "")
    kind = "missing (empty or NaN)" if blank.all() else "non-numeric"
    raise DataError(f"{source}: column {column!r} has {kind} values "
                    f"({int(bad.sum())} rows, {_first_bad(bad, frame, column)})")
  infinite = pd.Series(~np.isfinite(numbers.to_numpy(np.float64)), index=frame.index)
  if infinite.any():
    raise DataError(f"{source}: column {column!r} has infinite values "
                    f"({int(infinite.sum())} rows, {_first_bad(infinite, frame, column)})")
  return numbers.to_numpy(dtype=dtype)


def _timestamps(frame: pd.DataFrame, source: str) -> np.ndarray:
  """Seconds since the epoch, from numbers or from a datetime column (Parquet)."""
  column = frame[TIMESTAMP]
  if pd.api.types.is_datetime64_any_dtype(column):
    missing = column.isna()
    if missing.any():
      raise DataError(f"{source}: column {TIMESTAMP!r} has missing (NaT) values "
                      f"({int(missing.sum())} rows, {_first_bad(missing, frame, TIMESTAMP)})")
    epoch = pd.Timestamp(0, tz=column.dt.tz)
    return ((column - epoch) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
  seconds = _numbers(frame, TIMESTAMP, source, np.float64)
  out_of_range = pd.Series(np.abs(seconds) >= 2.0 ** 62, index=frame.index)
  if out_of_range.any():
    raise DataError(f"{source}: column {TIMESTAMP!r} has values out of range for seconds "
                    f"since the epoch ({_first_bad(out_of_range, frame, TIMESTAMP)})")
  return seconds.astype(np.int64)


def _check_interactions(frame: pd.DataFrame, source: str) -> pd.DataFrame:
  if frame is None or len(frame) == 0:
    raise DataError(f"{source}: no interactions (the table is empty)")
  _require_columns(frame, [USER_ID, ITEM_ID], source)
  out = pd.DataFrame({USER_ID: _ids(frame, USER_ID, source),
                      ITEM_ID: _ids(frame, ITEM_ID, source)})
  if TIMESTAMP in frame.columns:
    out[TIMESTAMP] = _timestamps(frame, source)
  if RATING in frame.columns:
    out[RATING] = _numbers(frame, RATING, source, np.float32)
  if SAMPLE_WEIGHT in frame.columns:
    out[SAMPLE_WEIGHT] = _numbers(frame, SAMPLE_WEIGHT, source, np.float32)
    negative = pd.Series(out[SAMPLE_WEIGHT] < 0)
    if negative.any():
      raise DataError(f"{source}: column {SAMPLE_WEIGHT!r} has negative weights "
                      f"({_first_bad(negative, out, SAMPLE_WEIGHT)})")
  for column in frame.columns.difference(out.columns):  # other numeric labels
    numbers = pd.to_numeric(frame[column], errors="coerce")
    bad = pd.Series(~np.isfinite(numbers.to_numpy(np.float64)), index=frame.index)  # NaN too
    if not bad.any():
      out[column] = numbers.to_numpy(dtype=np.float32)
    elif numbers.notna().mean() >= 0.5:
      logger.warning("%s: column %r is not a label: %d values are not finite numbers (%s)",
                     source, column, int(bad.sum()), _first_bad(bad, frame, column))
  return out


def check_feature_table(frame: pd.DataFrame, id_column: str,
                        features: dict[str, FeatureConfig], source: str) -> pd.DataFrame:
  """A validated user or item feature table on its own (e.g. new items)."""
  return _check_features(frame, id_column, features, pd.DataFrame({id_column: []}), source)


def _check_features(frame: Optional[pd.DataFrame], id_column: str,
                    features: dict[str, FeatureConfig],
                    interactions: pd.DataFrame, source: str) -> pd.DataFrame:
  """Validates a feature table; adds rows (missing features) for unknown ids."""
  if frame is None:
    if features:
      raise DataError(f"{source}: features {list(features)} are configured "
                      f"but no {source} table was given")
    frame = pd.DataFrame({id_column: []})
  elif len(frame) == 0:
    raise DataError(f"{source}: the feature table is empty")
  _require_columns(frame, [id_column, *features], source)
  out = pd.DataFrame({id_column: _ids(frame, id_column, source) if len(frame) else []})
  duplicated = pd.Series(out[id_column].duplicated(keep=False).to_numpy())
  if duplicated.any():
    raise DataError(f"{source}: column {id_column!r} has duplicate rows for one id "
                    f"({_first_bad(duplicated, out, id_column)}); keep one row per id")
  for name, spec in features.items():
    out[name] = _feature_values(frame[name], name, spec, source)
  for column in frame.columns.difference(out.columns):  # kept, e.g. titles
    out[column] = frame[column].to_numpy()
  unknown = pd.unique(interactions.loc[~ids_in(interactions[id_column], out[id_column]),
                                       id_column])
  if len(unknown) and len(out) and len(unknown) == interactions[id_column].nunique():
    raise DataError(f"{source}: none of the {len(unknown)} {id_column} values in the "
                    f"interactions has a row here (theirs: {unknown[0]!r}, this table's: "
                    f"{out[id_column].iloc[0]!r}); check that both name ids alike")
  if len(unknown):
    if len(out):
      logger.warning("%s: %d %s values in the interactions have no row here "
                     "(first: %r); their features map to the OOV bucket",
                     source, len(unknown), id_column, unknown[0])
    added = pd.DataFrame({id_column: unknown})
    for name, spec in features.items():
      added[name] = (np.nan if spec.type == "bucketized" else
                     pd.Series([np.zeros(spec.dim, np.float32)] * len(added), dtype=object)
                     if spec.type == "vector" else "")
    out = pd.concat([out, added], ignore_index=True)
  return out


def _vector(value, dim: int) -> np.ndarray:
  """A vector feature's value: zeros where missing; text is numbers separated
  by spaces or commas, brackets optional (CSV)."""
  if value is None or (np.isscalar(value) and pd.isna(value)) or (
      isinstance(value, str) and not value.strip()):
    return np.zeros(dim, np.float32)
  if isinstance(value, str):
    value = value.strip().strip("[]").replace(",", " ").split()
  return np.asarray(value, np.float32)


def _feature_values(values: pd.Series, name: str, spec: FeatureConfig,
                    source: str) -> np.ndarray:
  """Numbers for bucketized features (non-numbers warn and become NaN),
  float32 arrays for vector features (missing becomes zeros), strings for
  the others (missing becomes "", the OOV token)."""
  if spec.type == "vector":
    vectors = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
      try:
        vector = _vector(value, spec.dim)
      except ValueError:
        vector = None
      if vector is None or vector.shape != (spec.dim,) or not np.isfinite(vector).all():
        raise DataError(f"{source}: column {name!r} must hold {spec.dim} finite floats "
                        f"per row (a list, or in CSV the numbers separated by spaces or "
                        f"commas); row {row + 1} has {value!r}")
      vectors[row] = vector
    return vectors
  if spec.type == "bucketized":
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any() and numbers.isna().all():
      raise DataError(f"{source}: bucketized column {name!r} has no numbers "
                      f"({_first_bad(bad, values.to_frame(), name)})")
    if bad.any():
      logger.warning("%s: column %r has %d non-numeric values (%s); they are "
                     "treated as missing", source, name, int(bad.sum()),
                     _first_bad(bad, values.to_frame(), name))
    return numbers.to_numpy(dtype=np.float32)
  return values.fillna("").astype(str).to_numpy(dtype=object)
