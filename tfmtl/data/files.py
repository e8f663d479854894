"""Local files: CSV, TSV, Parquet and RecBole atomic files, through pandas.

A row of a text file with more or fewer fields than its header is an error
naming it (pandas would pad a short row with empty values, or take a first
column for the index), e.g. `line 3 of ratings.csv: 3 fields, expected 4
(user_id, item_id, rating, timestamp)`; rows are named as
`tfmtl.data.schema.where` names them (the header is line 1).

Example (a CSV of ratings whose columns are named differently):

>>> import pathlib, tempfile
>>> from tfmtl.data import load_files
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "ratings.csv").write_text("uid,movie,stars\\n1,10,4\\n2,10,3\\n")
>>> data = load_files(folder / "ratings.csv",
...                   columns={"user_id": "uid", "item_id": "movie", "rating": "stars"})
>>> data.interactions.to_dict("list")
{'user_id': ['1', '2'], 'item_id': ['10', '10'], 'rating': [4.0, 3.0]}
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from tfmtl.config import FeatureConfig
from tfmtl.data.schema import (ORIGIN, RATING, TIMESTAMP, DataError, InteractionData, Origin,
                               require_columns, text_records, where)

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".inter": "atomic", ".user": "atomic", ".item": "atomic"}

FILE_FORMATS = ("auto",) + tuple(dict.fromkeys(_FORMATS.values()))  # `data.format`


def read_table(path: str | Path, format: str = "auto") -> pd.DataFrame:
  """Reads one table; text formats are read as strings (checked later).

  The table's `attrs[ORIGIN]` is its `Origin` (see `tfmtl.data.schema`),
  which names its rows in errors.

  Args:
    path: the file, or a pattern naming shards of one table (e.g.
      `interactions-*.parquet`), read in name order.
    format: `auto` (from the extension), `csv`, `tsv`, `parquet` or `atomic`
      (RecBole: tab-separated, `name:type` headers, token lists space-separated).
  """
  path = Path(path)
  if any(wildcard in path.name for wildcard in "*?["):
    shards = sorted(path.parent.glob(path.name))
    if not shards:
      raise DataError(f"{path}: no file matches")
    parts = [read_table(shard, format) for shard in shards]
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs[ORIGIN] = Origin(tuple(file for part in parts
                                       for file in part.attrs[ORIGIN].files))
    return frame
  if format not in FILE_FORMATS:
    raise DataError(f"{path}: unknown format {format!r}; expected one of "
                    f"{', '.join(FILE_FORMATS)}")
  if format == "auto":
    format = _FORMATS.get(path.suffix.lower(), "")
    if not format:
      raise DataError(f"{path}: cannot tell the format from the extension; name it "
                      f"(data.format, or add-items' --format): csv, tsv, parquet or atomic")
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  delimiter = None if format == "parquet" else "," if format == "csv" else "\t"
  try:
    if format == "parquet":
      frame = pd.read_parquet(path, engine="pyarrow")
    else:
      frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False,
                          na_filter=False)
  except pd.errors.EmptyDataError:
    raise DataError(f"{path}: the file is empty") from None
  except pd.errors.ParserError as error:  # a row with too many fields, a quote not closed
    _check_fields(path, delimiter, unclosed="EOF inside string" in str(error))
    raise DataError(f"{path}: cannot be read as {format}: {error}") from None
  except (UnicodeDecodeError, OSError, ValueError) as error:
    raise DataError(f"{path}: cannot be read as {format}: {error}") from None
  frame.attrs[ORIGIN] = Origin(((str(path), len(frame), delimiter),))
  if format == "parquet":
    return frame
  # pandas pads a short row with "" (a last column's "" may be one) and
  # takes the first column for the index where the first row has one field more
  if not frame.index.equals(pd.RangeIndex(len(frame))) or (frame.iloc[:, -1] == "").any():
    _check_fields(path, delimiter)
  if format == "atomic":
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
  try:
    header = next(text_records(path, delimiter), (1, []))[1]
  except csv.Error:
    header = list(frame.columns)
  header = [name.split(":", 1)[0] if format == "atomic" else name for name in header]
  repeated = sorted({name for name in header if header.count(name) > 1})
  if repeated:
    raise DataError(f"{path}: the header names {repeated} more than once")
  return frame


def _check_fields(path: Path, delimiter: str, unclosed: bool = False) -> None:
  """Raises `line N of FILE: 3 fields, expected 4 (a, b, c, d)` for the first
  row with more or fewer fields than the header, if there is one; where
  pandas found a quote `unclosed`, `line N of FILE: a quoted field opened on
  this line is never closed`. Reads the file once more, with Python's csv
  module; where that cannot read it, pandas' error stands."""
  try:
    row, fields, header = _odd_record(path, delimiter, last=unclosed)
  except csv.Error:
    return
  if row is None:
    return
  at = where(Origin(((str(path), row + 1, delimiter),)), row)
  if unclosed:
    raise DataError(f"{at}: a quoted field opened on this line is never closed")
  raise DataError(f"{at}: {len(fields)} field{'s' * (len(fields) != 1)}, expected "
                  f"{len(header)} ({', '.join(header)})")


def _odd_record(path: Path, delimiter: str, last: bool):
  """(data row from 0, fields, header) of the first record whose number of
  fields is not the header's, or of the last record where `last` (the csv
  module takes the rest of the file for a field whose quote is not closed);
  row None where there is none."""
  records = text_records(path, delimiter)
  _, header = next(records, (1, []))
  found = (None, [], header)
  for row, (_, fields) in enumerate(records):
    found = (row, fields, header)
    if not last and len(fields) != len(header):
      return found
  return found if last else (None, [], header)


def load_files(interactions: str | Path | Sequence[Optional[str | Path]],
               users: Optional[str | Path] = None,
               items: Optional[str | Path] = None,
               format: str = "auto",
               columns: Optional[dict[str, str]] = None,
               user_features: Optional[dict[str, FeatureConfig]] = None,
               item_features: Optional[dict[str, FeatureConfig]] = None,
               domain_column: Optional[str] = None) -> InteractionData:
  """Loads interactions and optional user / item feature tables from files.

  Args:
    interactions, users, items: file paths; `interactions` may be the
      (train, validation, test) files of a split made beforehand
      (validation None for none): read as one table, whose rows keep their
      part (`InteractionData.given_split`, `split.protocol: given`).
    format: see `read_table`.
    columns: file column for each canonical name (`user_id`, `item_id`,
      `rating`, `timestamp`) that the files name differently.
    user_features, item_features: feature columns and their encoding.
    domain_column: the interaction (or user) column of each interaction's
      domain (`InteractionData.from_frames`).
  """
  rename = {file_column: name for name, file_column in (columns or {}).items()}
  frames, sources, given_split = {}, {}, ()
  if not isinstance(interactions, (str, Path)):
    parts = [read_table(path, format) if path is not None else None for path in interactions]
    given_split = tuple(0 if part is None else len(part) for part in parts)
    parts = [part for part in parts if part is not None]
    frames["interactions"] = pd.concat(parts, ignore_index=True)
    frames["interactions"].attrs[ORIGIN] = Origin(tuple(
        file for part in parts for file in part.attrs[ORIGIN].files))
    sources["interactions"] = ", ".join(str(path) for path in interactions if path is not None)
    interactions = next(path for path in interactions if path is not None)
  for role, path in (("interactions", interactions), ("users", users),
                     ("items", items)):
    if path is not None and role not in frames:
      frames[role] = read_table(path, format)
      sources[role] = str(path)
  for name, file_column in (columns or {}).items():  # rating and timestamp: the interactions'
    if name in (RATING, TIMESTAMP) or not any(file_column in frame.columns
                                              for frame in frames.values()):
      require_columns(frames["interactions"].columns, [file_column], sources["interactions"],
                      f"; data.columns.{name} names it" if file_column != name else "")
  for role, frame in frames.items():
    for name, file_column in (columns or {}).items():
      if file_column != name and file_column in frame.columns and name in frame.columns:
        raise DataError(f"{sources[role]}: columns {file_column!r} and {name!r} would both "
                        f"be {name!r} (data.columns.{name} names {file_column!r}); drop "
                        f"or rename one")
  frames = {role: frame.rename(columns=rename) for role, frame in frames.items()}
  return InteractionData.from_frames(
      frames["interactions"], frames.get("users"), frames.get("items"),
      user_features, item_features, sources=sources,
      name=Path(interactions).stem.split("*")[0].rstrip("-_.") or "interactions",
      domain_column=domain_column, given_split=given_split)
