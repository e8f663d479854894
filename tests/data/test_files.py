"""Local files: CSV, TSV, Parquet and RecBole atomic files give the same data."""

import pandas as pd
import pytest

from tfmtl.config import FeatureConfig
from tfmtl.data import DataError, load_files
from tfmtl.data.files import read_table

ITEM_FEATURES = {"genres": FeatureConfig("multi_categorical"),
                 "year": FeatureConfig("bucketized")}


@pytest.fixture
def frames():
  ratings = pd.DataFrame({"uid": ["1", "1", "2"], "iid": ["10", "11", "10"],
                          "stars": [4.0, 2.0, 5.0], "ts": [100, 200, 300]})
  items = pd.DataFrame({"iid": ["10", "11"], "genres": ["Drama|Comedy", "Action"],
                        "year": [1995.0, 2001.0]})
  return ratings, items


COLUMNS = {"user_id": "uid", "item_id": "iid", "rating": "stars", "timestamp": "ts"}


@pytest.mark.parametrize("format", ["csv", "tsv", "parquet"])
def test_formats_load_the_same_data(tmp_path, frames, format):
  ratings, items = frames
  paths = []
  for name, frame in (("ratings", ratings), ("items", items)):
    path = tmp_path / f"{name}.{format}"
    if format == "parquet":
      frame.to_parquet(path)
    else:
      frame.to_csv(path, sep="," if format == "csv" else "\t", index=False)
    paths.append(path)
  data = load_files(paths[0], items=paths[1], columns=COLUMNS, item_features=ITEM_FEATURES)
  assert data.interactions.to_dict("list") == {
      "user_id": ["1", "1", "2"], "item_id": ["10", "11", "10"],
      "timestamp": [100, 200, 300], "rating": [4.0, 2.0, 5.0]}
  assert data.items.set_index("item_id")["genres"].to_dict() == {
      "10": "Drama|Comedy", "11": "Action"}


def test_recbole_atomic_headers_lose_their_types(tmp_path):
  path = tmp_path / "toy.inter"
  path.write_text("user_id:token\titem_id:token\trating:float\n1\t5\t3\n")
  data = load_files(path)
  assert list(data.interactions.columns) == ["user_id", "item_id", "rating"]


def test_empty_file_is_named(tmp_path):
  path = tmp_path / "empty.csv"
  path.write_text("")
  with pytest.raises(DataError, match=r"empty.csv: the file is empty"):
    load_files(path)


def test_header_only_file_has_no_interactions(tmp_path):
  path = tmp_path / "header.csv"
  path.write_text("user_id,item_id,rating\n")
  with pytest.raises(DataError, match=r"header.csv: no interactions"):
    load_files(path)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(DataError, match=r"absent.csv: file not found"):
    load_files(tmp_path / "absent.csv")


@pytest.mark.parametrize("name, text, columns, message", [
    ("ratings.dat", "x", None, r"ratings.dat: cannot tell the format.*data.format"),
    ("ratings.csv", "user_id,item_id,rating\n1,2,4\n1,3,\n", None,
     r"ratings.csv: column 'rating' has missing .*row 2"),
    ("ratings.csv", "user_id,item_id,rating,rating\n1,2,4,5\n", None,
     r"ratings.csv: the header names \['rating'\] more than once"),
    ("ratings.csv", "user_id,item_id,rating\n1,2,4\n", {"item_id": "movie"},
     r"data.columns.item_id: no file has a column 'movie' \(the interactions have "
     r"\['user_id', 'item_id', 'rating'\]\)"),
], ids=["extension", "rating", "header", "columns"])
def test_a_bad_file_is_an_error_naming_it(tmp_path, name, text, columns, message):
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(DataError, match=message):
    load_files(path, columns=columns)


def test_an_unknown_format_is_named_not_guessed(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text("user_id,item_id\n1,2\n")
  with pytest.raises(DataError, match=r"ratings.csv: unknown format 'xlsx'; expected one of "
                                      r"auto, csv, tsv, parquet, atomic"):
    read_table(path, "xlsx")
