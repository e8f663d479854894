"""tf.data pipelines: encoded batches, reshuffled each epoch, every row once."""

from tfmtl.data import encode_examples, make_dataset
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
  import tensorflow as tf
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
