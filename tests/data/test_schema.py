"""Validation of interactions and feature tables: errors name file, column, row."""

import logging

import numpy as np
import pandas as pd
import pytest

from tfmtl.config import FeatureConfig
from tfmtl.data import DataError, InteractionData

SOURCES = {"interactions": "ratings.csv", "users": "users.csv", "items": "items.csv"}


def _frames(**interactions):
  base = {"user_id": ["1", "2", "3"], "item_id": ["a", "b", "a"], "rating": ["4", "5", "3"]}
  base.update(interactions)
  return pd.DataFrame(base)


def test_missing_required_column_names_file_and_column():
  with pytest.raises(DataError, match=r"ratings.csv: missing required column\(s\) \['item_id'\]"):
    InteractionData.from_frames(pd.DataFrame({"user_id": ["1"]}), sources=SOURCES)


def test_non_numeric_rating_names_column_and_first_bad_row():
  with pytest.raises(DataError,
                     match=r"ratings.csv: column 'rating' has non-numeric .*row 2: 'five'"):
    InteractionData.from_frames(_frames(rating=["4", "five", "x"]), sources=SOURCES)


def test_nan_rating_is_an_error():
  with pytest.raises(DataError, match=r"column 'rating' has missing \(empty or NaN\) values .*row 3"):
    InteractionData.from_frames(_frames(rating=[4.0, 5.0, np.nan]), sources=SOURCES)


def test_empty_ids_are_an_error():
  with pytest.raises(DataError, match=r"column 'user_id' has empty ids .*row 1"):
    InteractionData.from_frames(_frames(user_id=["", "2", "3"]), sources=SOURCES)


def test_empty_interactions_are_an_error():
  with pytest.raises(DataError, match=r"ratings.csv: no interactions"):
    InteractionData.from_frames(_frames().iloc[:0], sources=SOURCES)


def test_duplicate_feature_rows_for_one_id_are_an_error():
  users = pd.DataFrame({"user_id": ["1", "2", "1"], "gender": ["M", "F", "F"]})
  with pytest.raises(DataError, match=r"users.csv: column 'user_id' has duplicate rows .*'1'"):
    InteractionData.from_frames(_frames(), users,
                                user_features={"gender": FeatureConfig("categorical")},
                                sources=SOURCES)


def test_missing_feature_column_names_the_table():
  users = pd.DataFrame({"user_id": ["1", "2", "3"]})
  with pytest.raises(DataError, match=r"users.csv: missing required column\(s\) \['gender'\]"):
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
  assert "column 'year' has 1 non-numeric values (first at row 2: 'unkonwn')" in caplog.text
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
  with pytest.raises(DataError, match=r"items: column 'content' must hold 3 finite floats.*row 2"):
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
