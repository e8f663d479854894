"""Vocabularies come from training data only; unknown values map to OOV."""

import numpy as np
import tensorflow as tf

from tfmtl.features import FeatureVocabulary


def test_vocabulary_is_built_from_training_interactions_only(tiny_data):
  train = tiny_data.interactions[tiny_data.interactions["user_id"] != "u0"]
  vocabulary = FeatureVocabulary.build(tiny_data, train)
  assert "u0" not in vocabulary.user_ids
  assert set(vocabulary.item_ids) == set(train["item_id"])
  counts = train["item_id"].value_counts()
  assert vocabulary.item_counts == [int(counts[i]) for i in vocabulary.item_ids]


def test_encoder_maps_unknown_and_missing_values_to_index_zero(tiny_data):
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  encoded = encoder({
      "user_id": np.array(["u1", "stranger"], dtype=object),
      "taste": np.array(["t1", "t9"], dtype=object),
      "age": np.array([30.0, np.nan], dtype=np.float32),
      "genres": np.array(["Action|Comedy", "Western|"], dtype=object)})
  assert encoded["user_id"].numpy()[1] == 0 and encoded["user_id"].numpy()[0] > 0
  assert encoded["taste"].numpy()[1] == 0 and encoded["taste"].numpy()[0] > 0
  assert encoded["age"].numpy().tolist()[1] == 0 and encoded["age"].numpy()[0] >= 1
  genres = encoded["genres"].numpy()
  assert genres[0].sum() == 2 and genres[0][0] == 0  # two known tokens
  assert genres[1].tolist() == [1.0] + [0.0] * (genres.shape[1] - 1)  # one OOV token


def test_categorical_prefix_keeps_the_first_characters(movielens):
  vocabulary = FeatureVocabulary.build(movielens, movielens.interactions)
  assert movielens.user_features["zip_code"].prefix == 2
  prefixes = {zip_code[:2] for zip_code in movielens.users["zip_code"]}
  assert set(vocabulary.tokens["zip_code"]) == prefixes and 100 < len(prefixes) < 120


def test_bucket_boundaries_are_training_quantiles(tiny_data):
  vocabulary = FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  years = tiny_data.items["year"]
  expected = np.quantile(years, [0.25, 0.5, 0.75])
  assert np.allclose(vocabulary.boundaries["year"], expected)
  assert vocabulary.size("year") == 3 + 2  # buckets plus the missing bucket


def test_vocabulary_round_trips_through_json(tiny_data, tmp_path):
  vocabulary = FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  vocabulary.save(tmp_path / "vocabulary.json")
  assert FeatureVocabulary.load(tmp_path / "vocabulary.json") == vocabulary


def test_item_probabilities_follow_training_frequency(tiny_data):
  vocabulary = FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  probabilities = vocabulary.item_probabilities()
  assert np.isclose(probabilities.sum(), 1.0)
  assert list(np.argsort(-probabilities[1:], kind="stable")) == list(
      range(len(vocabulary.item_ids)))


def test_the_models_layers_do_not_track_vocabularies_element_by_element(tiny_data):
  # Keras walks every element of a list a layer holds each time it lists the
  # model's layers or variables: with 1M items, 0.7 s a listing.
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  string_lookups = {name: layer for name, layer in encoder.lookups.items()
                    if hasattr(layer, "input_vocabulary")}
  assert {"user_id", "item_id", "taste"} <= set(string_lookups)
  assert not any(isinstance(layer.input_vocabulary, tf.__internal__.tracking.TrackableDataStructure)
                 for layer in string_lookups.values())
