"""Local files: CSV, TSV, Parquet and RecBole atomic files give the same data;
errors name the file, the column and the row: `line N of FILE` in a text file
(the header is line 1), `row N of FILE` in Parquet."""

import pandas as pd
import pytest

from tfmtl.config import FeatureConfig
from tfmtl.data import DataError, load_files
from tfmtl.data.files import read_table
from tfmtl.data.schema import check_feature_table

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
  assert data.sources["interactions"] == str(paths[0])


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
     r"line 3 of .*ratings.csv: column 'rating' has no value \(empty or NaN\)$"),
    ("ratings.csv", "user_id,item_id,rating,rating\n1,2,4,5\n", None,
     r"ratings.csv: the header names \['rating'\] more than once"),
    ("ratings.csv", "user_id,item_id,rating\n1,2,4\n", {"item_id": "movie"},
     r"ratings.csv: column 'movie' is missing \(columns: user_id, item_id, rating\); "
     r"data.columns.item_id names it$"),
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


def _error(load, *args, **kwargs) -> str:
  with pytest.raises(DataError) as error:
    load(*args, **kwargs)
  return str(error.value)


def test_a_missing_rating_column_names_the_file_and_the_column(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text("user_id,item_id,timestamp\n1,10,100\n")
  assert _error(load_files, path, columns={"rating": "rating"}) == (
      f"{path}: column 'rating' is missing (columns: user_id, item_id, timestamp)")
  assert _error(load_files, path, columns={"rating": "stars"}) == (
      f"{path}: column 'stars' is missing (columns: user_id, item_id, timestamp); "
      f"data.columns.rating names it")


def test_a_missing_feature_column_names_the_feature_file(tmp_path):
  (tmp_path / "ratings.csv").write_text("user_id,item_id\n1,10\n")
  (tmp_path / "items.csv").write_text("item_id,title\n10,Heat\n")
  assert _error(load_files, tmp_path / "ratings.csv", items=tmp_path / "items.csv",
                item_features=ITEM_FEATURES) == (
      f"{tmp_path / 'items.csv'}: columns 'genres', 'year' are missing "
      f"(columns: item_id, title)")


def test_a_short_interactions_row_is_named_short_at_its_line(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text("user_id,item_id,rating,timestamp\n1,10,4,100\n2,10,3\n")
  assert _error(load_files, path) == (
      f"line 3 of {path}: 3 fields, expected 4 (user_id, item_id, rating, timestamp)")


def test_a_long_row_is_named_at_its_line(tmp_path):
  path = tmp_path / "ratings.csv"
  for text, line in (("user_id,item_id,rating\n1,10,4\n2,10,3,9\n", 3),
                     ("user_id,item_id,rating\n1,10,4,9\n2,10,3,9\n", 2)):  # no index column
    path.write_text(text)
    assert _error(load_files, path) == (
        f"line {line} of {path}: 4 fields, expected 3 (user_id, item_id, rating)")


@pytest.mark.parametrize("role, text, message", [
    ("users", "user_id,age,taste\n1,30,x\n2\n", "1 field, expected 3 (user_id, age, taste)"),
    ("items", "item_id,genres,year\n10,Drama,1995\n11,Action\n",
     "2 fields, expected 3 (item_id, genres, year)"),
])
def test_a_short_row_in_a_feature_file_is_an_error_at_its_line(tmp_path, role, text, message):
  (tmp_path / "ratings.csv").write_text("user_id,item_id\n1,10\n2,11\n")
  path = tmp_path / f"{role}.csv"
  path.write_text(text)
  features = {"users": {"age": FeatureConfig("categorical"),
                        "taste": FeatureConfig("categorical")},
              "items": ITEM_FEATURES}
  assert _error(load_files, tmp_path / "ratings.csv", **{role: path},
                user_features=features["users"] if role == "users" else None,
                item_features=features["items"] if role == "items" else None) == (
      f"line 3 of {path}: {message}")


def test_empty_last_fields_are_values_not_short_rows(tmp_path):
  (tmp_path / "ratings.csv").write_text("user_id,item_id\n1,10\n")
  (tmp_path / "items.csv").write_text("item_id,year,genres\n10,1995,\n11,,\"\"\n")
  data = load_files(tmp_path / "ratings.csv", items=tmp_path / "items.csv",
                    item_features=ITEM_FEATURES)
  assert data.items["genres"].tolist() == ["", ""]


@pytest.mark.parametrize("rating, message", [
    ("", "has no value (empty or NaN)"),
    ("five", "has a non-numeric value 'five'"),
])
def test_a_bad_rating_is_named_by_its_line_the_header_being_line_1(tmp_path, rating, message):
  path = tmp_path / "ratings.csv"
  path.write_text(f"user_id,item_id,rating\n1,10,4\n2,10,{rating}\n")
  assert _error(load_files, path) == f"line 3 of {path}: column 'rating' {message}"


def test_lines_count_blank_lines_and_quoted_line_breaks_as_an_editor_does(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text('user_id,item_id,note,rating\n1,10,"two\nlines",4\n\n2,10,x,\n3,10,x,5\n')
  assert _error(load_files, path) == (
      f"line 5 of {path}: column 'rating' has no value (empty or NaN)")
  path.write_text('user_id,item_id,note,rating\n1,10,"two\nlines",4\n\n2,10,x\n')
  assert _error(load_files, path) == (
      f"line 5 of {path}: 3 fields, expected 4 (user_id, item_id, note, rating)")


def test_parquet_rows_are_counted_from_1_and_shards_by_their_own_lines(tmp_path):
  path = tmp_path / "ratings.parquet"
  pd.DataFrame({"user_id": ["1", "2"], "item_id": ["10", "10"],
                "rating": [4.0, None]}).to_parquet(path)
  assert _error(load_files, path) == (
      f"row 2 of {path}: column 'rating' has no value (empty or NaN)")
  (tmp_path / "part-1.csv").write_text("user_id,item_id,rating\n1,10,4\n")
  (tmp_path / "part-2.csv").write_text("user_id,item_id,rating\n2,10,4\n3,10,x\n")
  assert _error(load_files, tmp_path / "part-*.csv") == (
      f"line 3 of {tmp_path / 'part-2.csv'}: column 'rating' has a non-numeric value 'x'")


def test_a_feature_table_read_on_its_own_names_lines_too(tmp_path):
  path = tmp_path / "new.csv"
  path.write_text("item_id,year\n20,2001\n21,2002\n20,2003\n")
  assert _error(check_feature_table, read_table(path), "item_id",
                {"year": FeatureConfig("bucketized")}, str(path)) == (
      f"line 4 of {path}: column 'item_id' repeats the id '20' of line 2 of {path}; "
      f"keep one row per id")


def test_a_configured_column_beside_one_of_its_canonical_name_is_an_error(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text("user_id,item_id,stars,rating\n1,10,4,5\n")
  assert _error(load_files, path, columns={"rating": "stars"}) == (
      f"{path}: columns 'stars' and 'rating' would both be 'rating' (data.columns.rating "
      f"names 'stars'); drop or rename one")


def test_a_quote_never_closed_is_named_at_the_line_it_opens(tmp_path):
  path = tmp_path / "ratings.csv"
  path.write_text('user_id,item_id,rating\n1,10,4\n\n2,"10,3\n3,10,5\n')
  assert _error(load_files, path) == (
      f"line 4 of {path}: a quoted field opened on this line is never closed")
