"""The in-memory data model: interactions plus user and item feature tables.

Every source (offline MovieLens, TFDS, local files) ends in an
`InteractionData`, checked by `InteractionData.from_frames`:

- interactions: `user_id`, `item_id` (strings), optional `rating` (float32)
  and `timestamp` (int64), plus any numeric label columns; a numeric
  `sample_weight` column, if present, weights each interaction's losses
  (as Keras' `sample_weight` does; sample-based transfer sets it); with a
  `domain_column` (`data.domain_column`), a `domain` string per interaction:
  that interaction column's value, or else the user's value of that user
  column (multi-domain training, `tfmtl.layers.domains`);
- users / items: one row per id, with the feature columns named in
  `user_features` / `item_features` (a `FeatureConfig` each); other columns
  (e.g. titles) are kept as they are.

Bad input raises `DataError`, one line naming the file, the column and the
first bad row (and how many rows are bad). `where` names a row one way
everywhere:

- `line N of FILE` in a text file (CSV, TSV, RecBole atomic): N is the line
  as a text editor numbers it, so the header is line 1 and the first data
  row line 2; blank lines count, and a row whose quoted field spans lines
  is named by its first line;
- `row N of FILE` in a Parquet file, which has no lines, and `row N of
  NAME` in a table given as a frame: N counts data rows from 1.

`tfmtl.data.files.read_table` leaves the file(s) a table came from in
`frame.attrs[ORIGIN]` (an `Origin`), which is how rows of a file are named
by line. Ids that appear in the interactions but not in a feature table only
warn: their features are missing and map to the out-of-vocabulary bucket.

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

import csv
import dataclasses
import logging
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tfmtl.config import FeatureConfig

USER_ID, ITEM_ID, RATING, TIMESTAMP = "user_id", "item_id", "rating", "timestamp"
# The user's earlier items, `|`-joined, added by `tfmtl.data.history`.
HISTORY, HISTORY_SEPARATOR = "history", "|"
SAMPLE_WEIGHT = "sample_weight"
DOMAIN = "domain"  # the interaction's domain, from `data.domain_column`

logger = logging.getLogger("tfmtl")


class DataError(ValueError):
  """Input data is malformed; the message names the file, column and row."""


ORIGIN = "tfmtl.origin"  # the `DataFrame.attrs` key `read_table` leaves an `Origin` under


@dataclasses.dataclass(frozen=True)
class Origin:
  """The file or files (a pattern's shards, in order) a table was read from:
  each file's path, its number of data rows and its field delimiter (None
  for Parquet, whose rows have no lines)."""
  files: tuple[tuple[str, int, Optional[str]], ...]

  @property
  def rows(self) -> int:
    return sum(rows for _, rows, _ in self.files)


def where(source: str | Origin, index: int) -> str:
  """Names data row `index` (counted from 0) of a table read from `source`
  (an `Origin`) or named `source` (a frame's name), as the module doc says:
  `line N of FILE` in a text file, else `row N of FILE` / `row N of NAME`.

  Finding a text file's line reads the file up to that row (errors only);
  where that fails, the row is named by its number.
  """
  if isinstance(source, Origin):
    for path, rows, delimiter in source.files:
      if index < rows:
        break
      index -= rows
    else:
      return f"row {index + 1} of {source.files[-1][0]}"  # not in the files
    if delimiter is not None:
      try:
        for row, (line, _) in enumerate(text_records(path, delimiter)):
          if row == index + 1:  # the header is record 0
            return f"line {line} of {path}"
      except (csv.Error, OSError):  # Python's csv module reads it otherwise than pandas
        pass
    source = path
  return f"row {index + 1} of {source}"


def text_records(path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
  """The records of a CSV-like file as pandas' C reader takes them, the
  header first: (the line each starts on, its fields). Lines that are empty
  or only spaces and tabs are skipped, as pandas skips them; a quoted field
  may span lines (`csv.reader.line_num` counts them)."""
  limit = csv.field_size_limit(2 ** 31 - 1)  # pandas has no limit on a field
  try:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as file:
      reader = csv.reader(file, delimiter=delimiter)
      line = 1
      for fields in reader:
        if fields and (len(fields) > 1 or fields[0] == "" or fields[0].strip(" \t")):
          yield line, fields
        line = reader.line_num + 1
  finally:
    csv.field_size_limit(limit)


def require_columns(columns, required, source: str, note: str = "") -> None:
  """Raises `SOURCE: column 'x' is missing (columns: a, b)` (or `columns
  'x', 'y' are missing`) where `required` names columns not in `columns`,
  with `note` after."""
  missing = [c for c in required if c not in columns]
  if missing:
    names = ", ".join(map(repr, missing))
    what = f"column {names} is" if len(missing) == 1 else f"columns {names} are"
    raise DataError(f"{source}: {what} missing (columns: {', '.join(map(str, columns))})"
                    f"{note}")


@dataclasses.dataclass
class InteractionData:
  """Interactions with their user and item feature tables (see module doc)."""
  interactions: pd.DataFrame
  users: pd.DataFrame
  items: pd.DataFrame
  user_features: dict[str, FeatureConfig]
  item_features: dict[str, FeatureConfig]
  name: str = "data"
  # where each table came from (a file, a pattern): `interactions`, `users`, `items`
  sources: dict[str, str] = dataclasses.field(default_factory=dict)
  # a split made beforehand (`split.protocol: given`): the interactions are its
  # train, validation and test rows in that order, this many each
  given_split: tuple[int, ...] = ()

  @classmethod
  def from_frames(cls,
                  interactions: pd.DataFrame,
                  users: Optional[pd.DataFrame] = None,
                  items: Optional[pd.DataFrame] = None,
                  user_features: Optional[dict[str, FeatureConfig]] = None,
                  item_features: Optional[dict[str, FeatureConfig]] = None,
                  sources: Optional[dict[str, str]] = None,
                  name: str = "data",
                  domain_column: Optional[str] = None,
                  given_split: tuple[int, ...] = ()) -> "InteractionData":
    """Validates and normalises frames whose columns use the canonical names.

    Args:
      interactions: one row per interaction.
      users, items: feature tables (default: ids only, from the interactions).
      user_features, item_features: feature columns and their encoding.
      sources: where each frame came from (file paths), used in errors.
      name: a name for messages and reports.
      domain_column: an interaction column, or else a user column, whose
        value is each interaction's `domain` (see module doc).
      given_split: the rows of each part of a split made beforehand (train,
        validation, test), in that order in `interactions`.
    """
    sources = {"interactions": "interactions", "users": "users",
               "items": "items", **(sources or {})}
    user_features, item_features = user_features or {}, item_features or {}
    interactions = _check_interactions(interactions, sources["interactions"], domain_column)
    users = _check_features(users, USER_ID, user_features, interactions,
                            sources["users"])
    items = _check_features(items, ITEM_ID, item_features, interactions,
                            sources["items"])
    if domain_column is not None and DOMAIN not in interactions:
      interactions[DOMAIN] = _user_domains(interactions, users, domain_column, sources)
    return cls(interactions, users, items, user_features, item_features, name, sources,
               tuple(given_split))

  @property
  def label_columns(self) -> list[str]:
    """Numeric interaction columns a task can predict (e.g. `rating`)."""
    return [c for c in self.interactions.columns
            if c not in (USER_ID, ITEM_ID, TIMESTAMP, HISTORY, SAMPLE_WEIGHT, DOMAIN)]

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
    sample weight, history and domain where present."""
    return [USER_ID, ITEM_ID, *self.label_columns,
            *(c for c in (SAMPLE_WEIGHT, HISTORY, DOMAIN) if c in interactions.columns)]

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


def _origin(frame: pd.DataFrame, source: str) -> str | Origin:
  """Where `frame`'s rows are named from: the `Origin` `read_table` left on
  it while it still has the file's rows in the file's order, else `source`."""
  origin = frame.attrs.get(ORIGIN)
  if not isinstance(origin, Origin) or origin.rows != len(frame):
    return source
  parquet = all(delimiter is None for _, _, delimiter in origin.files)
  return origin if parquet or frame.index.equals(pd.RangeIndex(len(frame))) else source


def _first_bad(mask, values: pd.Series, origin: str | Origin) -> tuple[str, object, str]:
  """The first row where `mask` holds: where it is, its value in `values`
  and ` (and N more rows)` where there are more."""
  bad = np.flatnonzero(np.asarray(mask))
  more = "" if len(bad) == 1 else f" (and {len(bad) - 1} more row{'s' * (len(bad) > 2)})"
  value = values.iloc[int(bad[0])]
  if isinstance(value, np.generic):  # as it reads: 4.0, not np.float64(4.0)
    value = value.item()
  return where(origin, int(bad[0])), value, more


def _ids(frame: pd.DataFrame, column: str, origin) -> pd.api.extensions.ExtensionArray:
  values = frame[column]
  missing = values.isna() | (values.astype(str).str.strip() == "")
  if missing.any():
    at, _, more = _first_bad(missing, values, origin)
    raise DataError(f"{at}: column {column!r} has an empty id{more}")
  if pd.api.types.is_float_dtype(values) and (values % 1 == 0).all():
    values = values.astype(np.int64)  # 17.0 -> "17"
  return values.astype(str).array  # strings stay Arrow's: no copy to Python objects


def _numbers(frame: pd.DataFrame, column: str, origin, dtype) -> np.ndarray:
  raw = frame[column]
  numbers = pd.to_numeric(raw, errors="coerce")
  bad = numbers.isna()
  if bad.any():
    at, value, more = _first_bad(bad, raw, origin)
    blank = (pd.api.types.is_scalar(value) and pd.isna(value)) or not str(value).strip()
    what = "no value (empty or NaN)" if blank else f"a non-numeric value {value!r}"
    raise DataError(f"{at}: column {column!r} has {what}{more}")
  infinite = ~np.isfinite(numbers.to_numpy(np.float64))
  if infinite.any():
    at, value, more = _first_bad(infinite, raw, origin)
    raise DataError(f"{at}: column {column!r} has an infinite value {value!r}{more}")
  return numbers.to_numpy(dtype=dtype)


def _timestamps(frame: pd.DataFrame, origin) -> np.ndarray:
  """Seconds since the epoch, from numbers or from a datetime column (Parquet)."""
  column = frame[TIMESTAMP]
  if pd.api.types.is_datetime64_any_dtype(column):
    missing = column.isna()
    if missing.any():
      at, _, more = _first_bad(missing, column, origin)
      raise DataError(f"{at}: column {TIMESTAMP!r} has no value (NaT){more}")
    epoch = pd.Timestamp(0, tz=column.dt.tz)
    return ((column - epoch) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
  seconds = _numbers(frame, TIMESTAMP, origin, np.float64)
  out_of_range = np.abs(seconds) >= 2.0 ** 62
  if out_of_range.any():
    at, value, more = _first_bad(out_of_range, column, origin)
    raise DataError(f"{at}: column {TIMESTAMP!r} has {value!r}, out of range for "
                    f"seconds since the epoch{more}")
  return seconds.astype(np.int64)


def _check_interactions(frame: pd.DataFrame, source: str,
                        domain_column: Optional[str] = None) -> pd.DataFrame:
  if frame is None or len(frame) == 0:
    raise DataError(f"{source}: no interactions (the table is empty)")
  require_columns(frame.columns, [USER_ID, ITEM_ID], source)
  origin = _origin(frame, source)
  out = pd.DataFrame({USER_ID: _ids(frame, USER_ID, origin),
                      ITEM_ID: _ids(frame, ITEM_ID, origin)})
  if domain_column in frame.columns:
    out[DOMAIN] = _ids(frame, domain_column, origin)
    frame = frame.drop(columns=domain_column)  # not a label
  if TIMESTAMP in frame.columns:
    out[TIMESTAMP] = _timestamps(frame, origin)
  if RATING in frame.columns:
    out[RATING] = _numbers(frame, RATING, origin, np.float32)
  if SAMPLE_WEIGHT in frame.columns:
    out[SAMPLE_WEIGHT] = _numbers(frame, SAMPLE_WEIGHT, origin, np.float32)
    negative = out[SAMPLE_WEIGHT].to_numpy() < 0
    if negative.any():
      at, value, more = _first_bad(negative, frame[SAMPLE_WEIGHT], origin)
      raise DataError(f"{at}: column {SAMPLE_WEIGHT!r} has a negative weight {value!r}{more}")
  for column in frame.columns.difference(out.columns):  # other numeric labels
    numbers = pd.to_numeric(frame[column], errors="coerce")
    bad = ~np.isfinite(numbers.to_numpy(np.float64))  # NaN too
    if not bad.any():
      out[column] = numbers.to_numpy(dtype=np.float32)
    elif numbers.notna().mean() >= 0.5:
      at, value, more = _first_bad(bad, frame[column], origin)
      logger.warning("%s: column %r is not a label: %r is not a finite number%s",
                     at, column, value, more)
  return out


def _user_domains(interactions: pd.DataFrame, users: pd.DataFrame, column: str,
                  sources: dict[str, str]) -> np.ndarray:
  """Each interaction's user's value of the user column `column`."""
  if column not in users.columns:
    raise DataError(f"data.domain_column: {column!r} is neither a column of "
                    f"{sources['interactions']} nor of {sources['users']} (user columns: "
                    f"{sorted(users.columns)}); a domain is the request's: for an item "
                    "attribute, such as a product line, write each interaction's into the "
                    "interactions")
  values = users.set_index(USER_ID)[column]
  missing = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
  bad = missing & ids_in(values.index.to_series(), pd.unique(interactions[USER_ID]))
  if bad.any():
    raise DataError(f"data.domain_column: user {values.index[bad][0]!r} has no "
                    f"{column!r} in {sources['users']}; every interaction needs a domain")
  return values.astype(str).reindex(interactions[USER_ID]).to_numpy(object)


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
  require_columns(frame.columns, [id_column, *features], source)
  origin = _origin(frame, source)
  out = pd.DataFrame({id_column: _ids(frame, id_column, origin) if len(frame) else []})
  repeated = out[id_column].duplicated().to_numpy()
  if repeated.any():
    at, value, more = _first_bad(repeated, out[id_column], origin)
    first = int(np.flatnonzero((out[id_column] == value).to_numpy())[0])
    raise DataError(f"{at}: column {id_column!r} repeats the id {value!r} of "
                    f"{where(origin, first)}{more}; keep one row per id")
  for name, spec in features.items():
    out[name] = _feature_values(frame[name], name, spec, origin)
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
                    origin) -> np.ndarray:
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
        raise DataError(f"{where(origin, row)}: column {name!r} must hold {spec.dim} "
                        f"finite floats (a list, or in CSV the numbers separated by "
                        f"spaces or commas), not {value!r}")
      vectors[row] = vector
    return vectors
  if spec.type == "bucketized":
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
      at, value, more = _first_bad(bad, values, origin)
      if numbers.isna().all():
        raise DataError(f"{at}: bucketized column {name!r} has no numbers: {value!r}{more}")
      logger.warning("%s: column %r has a non-numeric value %r%s; such values are "
                     "treated as missing", at, name, value, more)
    return numbers.to_numpy(dtype=np.float32)
  return values.fillna("").astype(str).to_numpy(dtype=object)
