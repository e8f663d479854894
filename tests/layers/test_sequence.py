"""Sequence pooling of a user's recent items."""

import numpy as np
import pytest
import tensorflow as tf

from tfmtl.layers import SequencePooling


@pytest.mark.parametrize("kind", ["mean", "gru", "attention"])
def test_pooling_shape_padding_and_gradients(kind):
  pooling = SequencePooling(kind, num_items=10, dim=6, length=4)
  items = tf.constant([[3, 1, 2, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
  with tf.GradientTape() as tape:
    pooled = pooling(items)
    loss = tf.reduce_sum(pooled ** 2)
  assert pooled.shape == (3, 6)
  assert all(g is not None for g in tape.gradient(loss, pooling.trainable_variables))
  np.testing.assert_allclose(pooled[2].numpy(), 0.0)  # no history, zero vector
  # One item then padding pools to that one item alone: padding adds nothing.
  item = pooling.item_embedding(tf.constant([[5]]))
  alone = {"mean": lambda: item[:, 0], "gru": lambda: pooling.gru(item),
           "attention": lambda: item[:, 0] + pooling.recency_embedding(tf.constant([0]))}[kind]()
  np.testing.assert_allclose(pooled[1].numpy(), alone[0].numpy(), atol=1e-6)


def test_the_gru_reads_order():
  pooling = SequencePooling("gru", num_items=10, dim=6, length=3)
  forward = pooling(tf.constant([[1, 2, 3]])).numpy()
  backward = pooling(tf.constant([[3, 2, 1]])).numpy()
  assert np.abs(forward - backward).max() > 1e-4


@pytest.mark.parametrize("kind", ["mean", "gru", "attention"])
def test_pooling_computes_in_float16_under_mixed_precision(kind):
  from tfmtl.precision import dtype_policy
  with dtype_policy("mixed_float16"):
    pooling = SequencePooling(kind, num_items=10, dim=6, length=4,
                              item_vectors=np.ones([10, 3], np.float32))
  pooled = pooling(tf.constant([[3, 1, 2, 0], [0, 0, 0, 0]]))
  assert pooled.dtype == tf.float16
  assert np.isfinite(pooled.numpy()).all()
  np.testing.assert_allclose(pooled[1].numpy(), 0.0)  # no history, zero vector


@pytest.mark.parametrize("kind", ["mean", "gru"])
def test_history_items_read_their_fixed_vectors_through_a_trained_adapter(kind):
  vectors = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
  pooling = SequencePooling(kind, num_items=10, dim=6, length=3, item_vectors=vectors)
  items = tf.constant([[5, 0, 0], [4, 2, 0]])
  with tf.GradientTape() as tape:
    pooled = pooling(items)
    loss = tf.reduce_sum(pooled ** 2)
  gradients = dict(zip([v.name for v in pooling.trainable_variables],
                       tape.gradient(loss, pooling.trainable_variables)))
  adapter = next(name for name in gradients if "item_vector_adapter" in name)
  assert float(tf.reduce_sum(tf.abs(gradients[adapter]))) > 0
  item = (pooling.item_embedding(tf.constant([[5]]))
          + pooling.item_vector_adapter(tf.constant(vectors[None, 5])))
  alone = item[:, 0] if kind == "mean" else pooling.gru(item)
  np.testing.assert_allclose(pooled[0].numpy(), alone[0].numpy(), atol=1e-6)
  vectors[2] += 1.0  # the same items with another vector for item 2
  changed = SequencePooling(kind, num_items=10, dim=6, length=3, item_vectors=vectors)
  changed(items)
  changed.set_weights(pooling.get_weights())
  moved = changed(items).numpy()
  np.testing.assert_allclose(moved[0], pooled[0].numpy(), atol=1e-6)  # no item 2 there
  assert np.abs(moved[1] - pooled[1].numpy()).max() > 1e-4
  with pytest.raises(ValueError, match="item_vectors: 10 rows for 12 item indices"):
    SequencePooling(kind, num_items=12, dim=6, length=3, item_vectors=vectors)
