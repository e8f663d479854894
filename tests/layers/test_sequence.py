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
    pooling = SequencePooling(kind, num_items=10, dim=6, length=4)
  pooled = pooling(tf.constant([[3, 1, 2, 0], [0, 0, 0, 0]]))
  assert pooled.dtype == tf.float16
  assert np.isfinite(pooled.numpy()).all()
  np.testing.assert_allclose(pooled[1].numpy(), 0.0)  # no history, zero vector
