"""Local files: CSV, TSV, Parquet and RecBole atomic files, through pandas.

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
from typing import Optional

import pandas as pd

from tfmtl.config import FILE_FORMATS, FeatureConfig
from tfmtl.data.schema import DataError, InteractionData

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".inter": "atomic", ".user": "atomic", ".item": "atomic"}


def read_table(path: str | Path, format: str = "auto") -> pd.DataFrame:
  """Reads one table; text formats are read as strings (checked later).

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
    return pd.concat([read_table(shard, format) for shard in shards], ignore_index=True)
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
  try:
    if format == "parquet":
      return pd.read_parquet(path, engine="pyarrow")
    frame = pd.read_csv(path, sep="," if format == "csv" else "\t", dtype=str,
                        keep_default_na=False, na_filter=False)
  except pd.errors.EmptyDataError:
    raise DataError(f"{path}: the file is empty") from None
  except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
    raise DataError(f"{path}: cannot be read as {format}: {error}") from None
  if format == "atomic":
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
  header = _header(path, format)
  repeated = sorted({name for name in header if header.count(name) > 1})
  if repeated:
    raise DataError(f"{path}: the header names {repeated} more than once")
  return frame


def _header(path: Path, format: str) -> list[str]:
  """The column names as the file's first line spells them (pandas renames
  a repeated one `name.1`)."""
  with open(path, newline="", encoding="utf-8", errors="replace") as file:
    names = next(csv.reader(file, delimiter="," if format == "csv" else "\t"), [])
  return [name.split(":", 1)[0] if format == "atomic" else name for name in names]


def load_files(interactions: str | Path,
               users: Optional[str | Path] = None,
               items: Optional[str | Path] = None,
               format: str = "auto",
               columns: Optional[dict[str, str]] = None,
               user_features: Optional[dict[str, FeatureConfig]] = None,
               item_features: Optional[dict[str, FeatureConfig]] = None,
               ) -> InteractionData:
  """Loads interactions and optional user / item feature tables from files.

  Args:
    interactions, users, items: file paths.
    format: see `read_table`.
    columns: file column for each canonical name (`user_id`, `item_id`,
      `rating`, `timestamp`) that the files name differently.
    user_features, item_features: feature columns and their encoding.
  """
  rename = {file_column: name for name, file_column in (columns or {}).items()}
  frames, sources = {}, {}
  for role, path in (("interactions", interactions), ("users", users),
                     ("items", items)):
    if path is not None:
      frames[role] = read_table(path, format)
      sources[role] = str(path)
  for name, file_column in (columns or {}).items():
    if not any(file_column in frame.columns for frame in frames.values()):
      raise DataError(f"data.columns.{name}: no file has a column {file_column!r} "
                      f"(the interactions have {list(frames['interactions'].columns)})")
  frames = {role: frame.rename(columns=rename) for role, frame in frames.items()}
  return InteractionData.from_frames(
      frames["interactions"], frames.get("users"), frames.get("items"),
      user_features, item_features, sources=sources,
      name=Path(interactions).stem.split("*")[0].rstrip("-_.") or "interactions")
