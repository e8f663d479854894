"""Validation of interactions and feature tables: errors name file, column, row
(frames given in memory name data rows from 1: `row N of NAME`)."""

import logging

import numpy as np
import pandas as pd
import pytest

from tfmtl.config import FeatureConfig
from tfmtl.data import DataError, InteractionData
from tfmtl.data.schema import ids_in

SOURCES = {"interactions": "ratings.csv", "users": "users.csv", "items": "items.csv"}


def _frames(**interactions):
  base = {"user_id": ["1", "2", "3"], "item_id": ["a", "b", "a"], "rating": ["4", "5", "3"]}
  base.update(interactions)
  return pd.DataFrame(base)


def test_missing_required_column_names_file_and_column():
  with pytest.raises(DataError, match=r"^ratings.csv: column 'item_id' is missing "
                                      r"\(columns: user_id\)$"):
    InteractionData.from_frames(pd.DataFrame({"user_id": ["1"]}), sources=SOURCES)


def test_non_numeric_rating_names_column_and_first_bad_row():
  with pytest.raises(DataError,
                     match=r"^row 2 of ratings.csv: column 'rating' has a non-numeric "
                           r"value 'five' \(and 1 more row\)$"):
    InteractionData.from_frames(_frames(rating=["4", "five", "x"]), sources=SOURCES)


def test_nan_rating_is_an_error():
  with pytest.raises(DataError, match=r"^row 3 of ratings.csv: column 'rating' has no value "
                                      r"\(empty or NaN\)$"):
    InteractionData.from_frames(_frames(rating=[4.0, 5.0, np.nan]), sources=SOURCES)


def test_empty_ids_are_an_error():
  with pytest.raises(DataError, match=r"^row 1 of ratings.csv: column 'user_id' has an empty id$"):
    InteractionData.from_frames(_frames(user_id=["", "2", "3"]), sources=SOURCES)


def test_empty_interactions_are_an_error():
  with pytest.raises(DataError, match=r"ratings.csv: no interactions"):
    InteractionData.from_frames(_frames().iloc[:0], sources=SOURCES)


def test_duplicate_feature_rows_for_one_id_are_an_error():
  users = pd.DataFrame({"user_id": ["1", "2", "1"], "gender": ["M", "F", "F"]})
  with pytest.raises(DataError, match=r"^row 3 of users.csv: column 'user_id' repeats the id "
                                      r"'1' of row 1 of users.csv; keep one row per id$"):
    InteractionData.from_frames(_frames(), users,
                                user_features={"gender": FeatureConfig("categorical")},
                                sources=SOURCES)


def test_missing_feature_column_names_the_table():
  users = pd.DataFrame({"user_id": ["1", "2", "3"]})
  with pytest.raises(DataError, match=r"^users.csv: column 'gender' is missing "
                                      r"\(columns: user_id\)$"):
    InteractionData.from_frames(_frames(), users,
                                user_features={"gender": FeatureConfig("categorical")},
                                sources=SOURCES)


def test_ids_missing_from_a_feature_table_warn_and_get_missing_features(caplog):
  items = pd.DataFrame({"item_id": ["a"], "year": ["1999"]})
  with caplog.at_level(logging.WARNING, logger="tfmtl"):
    data = InteractionData.from_frames(
        _frames(), items=items, item_features={"year": FeatureConfig("bucketized")},
        sources=SOURCES)
  assert "items.csv: 1 item_id values in the interactions have no row here" in caplog.text
  row = data.items.set_index("item_id").loc["b"]
  assert np.isnan(row["year"])


def test_non_numeric_bucketized_feature_warns_and_becomes_missing(caplog):
  items = pd.DataFrame({"item_id": ["a", "b"], "year": ["1995", "unkonwn"]})
  with caplog.at_level(logging.WARNING, logger="tfmtl"):
    data = InteractionData.from_frames(
        _frames(), items=items, item_features={"year": FeatureConfig("bucketized")},
        sources=SOURCES)
  assert ("row 2 of items.csv: column 'year' has a non-numeric value 'unkonwn'; such "
          "values are treated as missing") in caplog.text
  assert data.items["year"].tolist()[0] == 1995.0 and np.isnan(data.items["year"].tolist()[1])


def test_ids_are_normalised_to_strings():
  data = InteractionData.from_frames(pd.DataFrame(
      {"user_id": [1.0, 2.0], "item_id": [10, 11], "rating": [1, 2]}))
  assert data.interactions["user_id"].tolist() == ["1", "2"]
  assert data.interactions["item_id"].tolist() == ["10", "11"]


def test_examples_join_features_onto_interactions(tiny_data):
  examples = tiny_data.examples(tiny_data.interactions.iloc[:5])
  assert set(examples) == {"user_id", "item_id", "taste", "age", "genres", "year",
                           "rating"}
  assert all(len(v) == 5 for v in examples.values())
  assert examples["rating"].dtype == np.float32 and examples["genres"].dtype == object


def test_vector_features_must_have_their_width():
  items = pd.DataFrame({"item_id": ["i1", "i2"],
                        "content": [np.ones(3, np.float32), np.ones(2, np.float32)]})
  with pytest.raises(DataError, match=r"^row 2 of items: column 'content' must hold 3 finite "
                                      r"floats .*, not array\(\[1., 1.\]"):
    InteractionData.from_frames(
        pd.DataFrame({"user_id": ["u"], "item_id": ["i1"]}), items=items,
        item_features={"content": FeatureConfig("vector", dim=3)})


def test_vector_features_are_zero_where_missing_and_stack_into_examples():
  items = pd.DataFrame({"item_id": ["i1"], "content": [np.array([1.0, 2.0], np.float32)]})
  data = InteractionData.from_frames(
      pd.DataFrame({"user_id": ["u", "u"], "item_id": ["i1", "i9"]}), items=items,
      item_features={"content": FeatureConfig("vector", dim=2)})
  examples = data.examples(data.interactions)
  np.testing.assert_array_equal(examples["content"], [[1.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("column, values, message", [
    ("rating", ["4", "inf", "3"], r"^row 2 of ratings.csv: column 'rating' has an infinite "
                                  r"value 'inf'$"),
    ("timestamp", ["1", "2", "-inf"], r"^row 3 of ratings.csv: column 'timestamp' has an "
                                      r"infinite value '-inf'$"),
    ("timestamp", ["1", "1e30", "3"], r"^row 2 of ratings.csv: column 'timestamp' has '1e30', "
                                      r"out of range for seconds since the epoch$"),
])
def test_numbers_that_are_not_finite_name_the_column_and_row(column, values, message):
  with pytest.raises(DataError, match=message):
    InteractionData.from_frames(_frames(**{column: values}), sources=SOURCES)


def test_datetime_timestamps_become_seconds_and_missing_ones_are_named():
  times = pd.to_datetime(["1998-01-01", "1998-01-02", "1998-01-03"], utc=True)
  data = InteractionData.from_frames(_frames(timestamp=times))
  assert data.interactions["timestamp"].tolist() == [883612800, 883699200, 883785600]
  with pytest.raises(DataError, match=r"^row 2 of ratings.csv: column 'timestamp' has no "
                                      r"value \(NaT\)$"):
    InteractionData.from_frames(_frames(timestamp=[times[0], pd.NaT, times[2]]),
                                sources=SOURCES)


def test_a_label_column_with_a_text_value_is_no_label_and_a_warning_names_the_row(caplog):
  with caplog.at_level(logging.WARNING, logger="tfmtl"):
    data = InteractionData.from_frames(_frames(clicks=["1", "n/a", "0"]), sources=SOURCES)
  assert data.label_columns == ["rating"]
  assert ("row 2 of ratings.csv: column 'clicks' is not a label: 'n/a' is not a finite "
          "number") in caplog.text


def test_a_feature_table_sharing_no_id_with_the_interactions_is_an_error():
  users = pd.DataFrame({"user_id": ["u1", "u2"], "taste": ["x", "y"]})
  with pytest.raises(DataError, match=r"users.csv: none of the 3 user_id values in the "
                                      r"interactions has a row here \(theirs: '1', this "
                                      r"table's: 'u1'\)"):
    InteractionData.from_frames(_frames(), users,
                                user_features={"taste": FeatureConfig("categorical")},
                                sources=SOURCES)


def test_a_bucketized_feature_without_any_number_is_an_error():
  items = pd.DataFrame({"item_id": ["a", "b"], "year": ["old", "new"]})
  with pytest.raises(DataError, match=r"^row 1 of items.csv: bucketized column 'year' has no "
                                      r"numbers: 'old' \(and 1 more row\)$"):
    InteractionData.from_frames(_frames(), items=items,
                                item_features={"year": FeatureConfig("bucketized")},
                                sources=SOURCES)


def test_vector_features_read_from_csv_text_and_bad_text_is_named():
  items = pd.DataFrame({"item_id": ["i1", "i2", "i3"],
                        "content": ["0.5 1.5", "[2, -1]", ""]})
  data = InteractionData.from_frames(
      pd.DataFrame({"user_id": ["u"], "item_id": ["i1"]}), items=items,
      item_features={"content": FeatureConfig("vector", dim=2)})
  np.testing.assert_array_equal(np.stack(data.items["content"]),
                                [[0.5, 1.5], [2.0, -1.0], [0.0, 0.0]])
  with pytest.raises(DataError, match=r"^row 1 of items: column 'content' must hold 2 finite "
                                      r"floats .*, not 'half one'$"):
    InteractionData.from_frames(
        pd.DataFrame({"user_id": ["u"], "item_id": ["i1"]}),
        items=items.assign(content=["half one", "1 2", "3 4"]),
        item_features={"content": FeatureConfig("vector", dim=2)})


@pytest.mark.parametrize("dtype", ["str", object])
def test_ids_in_answers_as_pandas_isin(dtype):
  """`ids_in` (Arrow's hash set) gives pandas' `isin`, for Arrow and object
  strings, empty tables and empty interactions included."""
  ids = pd.Series(["u1", "u2", "u1", "u3", ""], dtype=dtype)
  for known in (pd.Series(["u1", "u3", "u9"], dtype=dtype), pd.Index(["u2"]),
                pd.DataFrame({"user_id": []})["user_id"]):
    np.testing.assert_array_equal(ids_in(ids, known), ids.isin(known).to_numpy())
  assert ids_in(pd.DataFrame({"user_id": []})["user_id"], ids).shape == (0,)
