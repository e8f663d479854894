"""Ranking heads: a (query, candidate) embedding pair -> one task's logit.

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers import RankingHead
>>> head = RankingHead(hidden_layers=[16])
>>> head(tf.ones([4, 8]), tf.ones([4, 8])).shape
TensorShape([4, 1])
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras


class RankingHead(keras.layers.Layer):
  """An MLP over the query embedding, candidate embedding and their product.

  Args:
    hidden_layers: widths of the hidden ReLU layers.
  """

  def __init__(self, hidden_layers: Sequence[int] = (64,), **kwargs):
    super().__init__(**kwargs)
    self.dense_layers = [
        keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")
        for i, width in enumerate(hidden_layers)]
    self.dense_layers.append(keras.layers.Dense(1, name="logit"))

  def call(self, query_embeddings: tf.Tensor, candidate_embeddings: tf.Tensor) -> tf.Tensor:
    outputs = tf.concat([query_embeddings, candidate_embeddings,
                         query_embeddings * candidate_embeddings], axis=-1)
    for layer in self.dense_layers:
      outputs = layer(outputs)
    return outputs
