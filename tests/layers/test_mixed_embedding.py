"""Mixed-dimension id embeddings and their config."""

import numpy as np
import pytest
import tensorflow as tf

from tfmtl import FeatureVocabulary, MultiTaskModel
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.layers import MixedDimensionEmbedding


def _embedding():
  embedding = MixedDimensionEmbedding(20, 4, [(0.25, 6), (0.25, 3), (0.5, 1)])
  embedding(tf.constant([0]))
  return embedding


def test_output_shapes_follow_the_indices():
  embedding = _embedding()
  assert embedding(tf.constant([0, 7, 19])).shape == (3, 4)
  assert embedding(tf.constant([[1, 2], [15, 3]])).shape == (2, 2, 4)


def test_the_parameters_are_the_blocks_and_their_projections():
  embedding = _embedding()
  assert embedding.bounds == (0, 5, 10, 20)
  assert embedding.count_params() == (5 * 6 + 5 * 3 + 10 * 1) + (6 + 3 + 1) * 4


def test_frequent_and_rare_indices_read_their_own_blocks():
  embedding = _embedding()
  outputs = embedding(tf.constant([2, 7, 19])).numpy()
  tables = [t.numpy() for t in embedding.tables]
  projections = [p.numpy() for p in embedding.projections]
  np.testing.assert_allclose(outputs[0], tables[0][2] @ projections[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(outputs[1], tables[1][7 - 5] @ projections[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(outputs[2], tables[2][19 - 10] @ projections[2], rtol=1e-5, atol=1e-7)


def test_gradients_reach_only_the_rows_used():
  embedding = _embedding()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(embedding(tf.constant([1, 6, 6, 12])) ** 2)
  gradients = tape.gradient(loss, embedding.tables)
  used = [{1}, {6 - 5}, {12 - 10}]
  for gradient, rows in zip(gradients, used):
    touched = np.flatnonzero(np.abs(tf.convert_to_tensor(gradient).numpy()).sum(axis=1))
    assert set(touched) == rows


def test_every_block_gets_an_index():
  embedding = MixedDimensionEmbedding(3, 2, [(0.01, 4), (0.01, 2), (0.98, 1)])
  assert embedding.bounds == (0, 1, 2, 3)
  with pytest.raises(ValueError, match="user_id_embedding: 3 embedding blocks need at least "
                                       "as many indices, got 2"):
    MixedDimensionEmbedding(2, 2, [(0.5, 4), (0.25, 2), (0.25, 1)], name="user_id_embedding")


def test_the_config_mixes_the_tables_it_names(tiny_data):
  config = ExperimentConfig().with_overrides(
      ["model.id_embedding_blocks={item_id: [{share: 0.2, dim: 8}, {share: 0.8, dim: 2}]}"])
  blocks = config.model.id_embedding_blocks
  assert [(b.share, b.dim) for b in blocks["item_id"]] == [(0.2, 8), (0.8, 2)]
  assert ExperimentConfig().model.id_embedding_blocks == {}
  model = MultiTaskModel(FeatureVocabulary.build(tiny_data, tiny_data.interactions),
                         tiny_data.items, config.model)
  assert isinstance(model.candidate_tower.id_embedding, MixedDimensionEmbedding)
  assert not isinstance(model.query_tower.id_embedding, MixedDimensionEmbedding)


@pytest.mark.parametrize("blocks, message", [
    ("{item_id: [{share: 0.5, dim: 8}, {share: 0.4, dim: 2}]}",
     "id_embedding_blocks.item_id: the shares must sum to 1, got 0.9"),
    ("{user_id: [{share: 0.5, dim: 0}, {share: 0.5, dim: 2}]}",
     r"id_embedding_blocks.user_id\[0\].dim: must be at least 1"),
    ("{item_id: [{share: 0, dim: 4}, {share: 1, dim: 2}]}",
     r"id_embedding_blocks.item_id\[0\].share: must be in"),
    ("{item_id: [{share: 1}]}", r"id_embedding_blocks.item_id\[0\].dim: required"),
    ("{item_id: [[0.5, 8], [0.5, 2]]}", r"id_embedding_blocks.item_id\[0\]: expected a mapping"),
    ("{genres: [{share: 1, dim: 2}]}", "id_embedding_blocks: unknown id feature 'genres'"),
])
def test_bad_blocks_are_config_errors_naming_the_key(blocks, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig().with_overrides([f"model.id_embedding_blocks={blocks}"])


def test_blocks_compute_in_bfloat16_under_mixed_precision():
  from tfmtl.precision import dtype_policy
  with dtype_policy("mixed_bfloat16"):
    embedding = MixedDimensionEmbedding(20, 4, [(0.25, 6), (0.75, 2)])
  rows = embedding(tf.constant([[0, 19]]))
  assert rows.dtype == tf.bfloat16 and rows.shape == (1, 2, 4)
  assert {v.dtype for v in embedding.trainable_variables} == {tf.float32}
