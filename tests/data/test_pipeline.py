"""tf.data pipelines: encoded batches, reshuffled each epoch, every row once."""

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl.config import FeatureConfig
from tfmtl.data import InteractionData, encode_examples, encode_interactions, make_dataset
from tfmtl.data.history import add_history_column
from tfmtl.data.pipeline import batched_dataset
from tfmtl.features import FeatureVocabulary


def _rows(dataset):
  return [tuple(zip(b["user_id"].numpy(), b["item_id"].numpy(), b["rating"].numpy()))
          for b in dataset]


def test_batches_hold_encoded_features_and_labels(tiny_data):
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  batch = next(iter(make_dataset(tiny_data, tiny_data.interactions, encoder, 16)))
  assert batch["user_id"].dtype.name == "int64" and batch["user_id"].shape == (16,)
  assert batch["genres"].dtype.name == "float32" and batch["genres"].shape[0] == 16
  assert batch["rating"].numpy().tolist() == tiny_data.interactions["rating"][:16].tolist()


def test_every_row_once_per_epoch_in_a_new_order(tiny_data):
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  dataset = make_dataset(tiny_data, tiny_data.interactions, encoder, 32, shuffle=True, seed=3)
  first, second = ([r for batch in _rows(dataset) for r in batch] for _ in range(2))
  assert sorted(first) == sorted(second) and len(first) == len(tiny_data.interactions)
  assert first != second
  assert dataset.cardinality().numpy() == -(-len(tiny_data.interactions) // 32)


def test_the_same_seed_gives_the_same_orders(tiny_data):
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  orders = [[_rows(make_dataset(tiny_data, tiny_data.interactions, encoder, 32, shuffle=True,
                                seed=seed)) for _ in range(2)] for seed in (3, 3, 4)]
  assert orders[0] == orders[1] and orders[0] != orders[2]


def test_drop_remainder_gives_fixed_batch_shapes(tiny_data):
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  dataset = make_dataset(tiny_data, tiny_data.interactions, encoder, 50, drop_remainder=True)
  assert {b["item_id"].shape[0] for b in dataset} == {50}
  assert dataset.element_spec["item_id"].shape.as_list() == [50]
  assert dataset.cardinality().numpy() == len(tiny_data.interactions) // 50


def test_workers_share_each_epoch_between_them(tiny_data):
  """A parameter-server worker's input context: every row once per epoch
  across the workers, none twice."""
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  encoded = encode_examples(encoder, tiny_data.examples(tiny_data.interactions))
  shares = [[r for batch in _rows(batched_dataset(
                encoded, 32, True, seed=5, input_context=tf.distribute.InputContext(2, worker)))
             for r in batch] for worker in (0, 1)]
  everything = [r for batch in _rows(batched_dataset(encoded, 32, True, seed=5))
                for r in batch]
  assert sorted(shares[0] + shares[1]) == sorted(everything)
  assert abs(len(shares[0]) - len(shares[1])) <= 1


def test_gathering_several_batches_at_once_gives_the_same_batches(tiny_data, monkeypatch):
  """Rows are gathered about `GATHER_ROWS` at a time, then cut: the
  batches are those of one gather per batch, across chunk boundaries."""
  from tfmtl.data import pipeline
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  encoded = encode_examples(encoder, tiny_data.examples(tiny_data.interactions))
  assert len(tiny_data.interactions) % 7  # a last, smaller batch
  batches, three_batches = {}, 3 * 7 + 5  # rows: 1 batch, and 3 batches, per gather
  for gather_rows in (1, three_batches):
    monkeypatch.setattr(pipeline, "GATHER_ROWS", gather_rows)
    batches[gather_rows] = [
        _rows(batched_dataset(encoded, 7, True, seed=2, drop_remainder=drop))
        for drop in (False, True)]
  assert batches[three_batches] == batches[1]
  assert len(batches[three_batches][0]) == -(-len(tiny_data.interactions) // 7) > 3
  assert [len(b) for b in batches[three_batches][1]] == [7] * (len(tiny_data.interactions) // 7)


def test_feature_tables_encoded_once_give_the_joined_examples_encodings(tiny_frames):
  """`encode_interactions` encodes each table row once and gathers it by
  id: the arrays of encoding the raw join, for ids in and out of the
  vocabulary, ids the tables were given no row for (`from_frames` adds
  one) and ids not in the data at all, every feature type, history and
  weights."""
  make_frames, user_features = tiny_frames
  interactions, users, items = make_frames()
  extra = pd.DataFrame({"user_id": ["u_new", "u1"], "item_id": ["i1", "i_new"],
                        "rating": [3.0, 4.0], "timestamp": [5_000, 5_001]})
  interactions = pd.concat([interactions, extra], ignore_index=True).assign(
      sample_weight=lambda frame: np.linspace(0.5, 1.5, len(frame)))
  items = items.assign(content=[np.array([i, -i], np.float32) for i in range(len(items))])
  item_features = {"genres": FeatureConfig("multi_categorical"),
                   "year": FeatureConfig("bucketized", num_buckets=4),
                   "content": FeatureConfig("vector", dim=2)}
  data = InteractionData.from_frames(interactions, users, items.iloc[5:],
                                     user_features, item_features)
  # Tables reversed, index kept: the rows from_frames added for unknown ids come
  # first, so neither table ends in a row of missing features.
  data = dataclasses.replace(data, users=data.users.iloc[::-1], items=data.items.iloc[::-1])
  train = data.interactions.iloc[: len(data.interactions) // 2]  # later users: unknown ids
  rows = add_history_column(train, data.interactions, 3).iloc[::-1]
  rows = pd.concat([rows, rows.iloc[:1].assign(user_id="u_never", item_id="i_never")])
  encoder = FeatureVocabulary.build(data, train, history_length=3).encoder()
  encoded = encode_interactions(encoder, data, rows)
  expected = encode_examples(encoder, data.examples(rows))
  assert list(encoded) == list(expected)
  for name, values in expected.items():
    np.testing.assert_array_equal(encoded[name], values, err_msg=name)
  assert (encoded["user_id"] == 0).sum() > len(rows) // 3  # out of the vocabulary
  missing_content = rows["item_id"].isin(
      ["i_new", "i_never", *(f"i{i}" for i in range(5))]).to_numpy()
  assert missing_content.any() and not encoded["content"][missing_content].any()
  assert encoded["content"][~missing_content].any(axis=1).all()


def test_batches_run_without_the_autotuning_thread(tiny_data):
  """Deleting an iterator (Keras does, every epoch) waits for tf.data's
  autotuning thread to wake: the in-memory batches turn it off, shuffled
  or not, with a worker's share or without."""
  encoder = FeatureVocabulary.build(tiny_data, tiny_data.interactions).encoder()
  encoded = encode_examples(encoder, tiny_data.examples(tiny_data.interactions))
  datasets = [make_dataset(tiny_data, tiny_data.interactions, encoder, 16),
              batched_dataset(encoded, 16, True, seed=1,
                              input_context=tf.distribute.InputContext(2, 1))]
  assert [d.options().autotune.enabled for d in datasets] == [False, False]
  assert tf.data.Dataset.range(3).options().autotune.enabled is not False  # TF's default
