"""Pooling of a user's recent items (the `history` feature) into one vector.

The history arrives as item indices, most recent first, 0-padded
([batch, length]). Items are embedded (index 0 masked) and pooled:

- `mean`: the average of the item embeddings (order-free: a bag of items);
- `gru`, `lstm`: a GRU or an LSTM reads them oldest to newest; its last
  output is the vector;
- `attention`: each item plus a learned recency (position) embedding is
  scored by a small MLP; the vector is the softmax-weighted sum.

A user without history gets a zero vector. With `item_vectors` (a fixed
vector per item index, e.g. its text's from `content.encoder`, or a layer
that computes them, e.g. trainable text layers), each item's embedding adds
that vector through a trainable linear adapter, so the history reads what
the items are as well as which they are.

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers import SequencePooling
>>> pooling = SequencePooling("attention", num_items=10, dim=4, length=3)
>>> pooled = pooling(tf.constant([[3, 1, 0], [0, 0, 0]]))
>>> pooled.shape, float(tf.reduce_sum(tf.abs(pooled[1])))
(TensorShape([2, 4]), 0.0)
>>> texts = tf.random.normal([10, 6])  # row i: item index i's content vector
>>> reading = SequencePooling("mean", num_items=10, dim=4, length=3, item_vectors=texts)
>>> reading(tf.constant([[3, 1, 0]])).shape
TensorShape([1, 4])
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras


POOLINGS = ("mean", "gru", "lstm", "attention")  # `model.sequence.type` (or none)


class SequencePooling(keras.layers.Layer):
  """Embeds and pools a 0-padded sequence of item indices (see module doc).

  Args:
    kind: `mean`, `gru`, `lstm` or `attention`.
    num_items: number of item indices (OOV / padding 0 included).
    dim: width of the item embeddings and of the output.
    length: sequence length (the recency embedding of `attention`).
    item_vectors: optional [num_items, d] fixed vectors of the item
      indices, read through a trainable `item_vector_adapter` (index 0, the
      padding, is ignored). The attribute may then be set to a layer
      mapping [batch, length] item indices to [batch, length, d] vectors
      (`tfmtl.text_tower` sets its trainable text layers).
  """

  def __init__(self, kind: str, num_items: int, dim: int, length: int,
               item_vectors: Optional[tf.Tensor | np.ndarray] = None, **kwargs):
    super().__init__(**kwargs)
    if kind not in POOLINGS:
      raise ValueError(f"unknown sequence pooling {kind!r}; expected one of "
                       f"{', '.join(POOLINGS)}")
    self.kind = kind
    self.item_embedding = keras.layers.Embedding(num_items, dim, name="item_embedding")
    self.item_vectors = None
    if item_vectors is not None:
      if item_vectors.shape[0] != num_items:
        raise ValueError(f"item_vectors: {item_vectors.shape[0]} rows for {num_items} item "
                         "indices")
      self.item_vectors = tf.constant(item_vectors, tf.float32)
      self.item_vector_adapter = keras.layers.Dense(dim, use_bias=False,
                                                    name="item_vector_adapter")
    if kind == "gru":  # (attributes name checkpoint entries: runs saved before keep theirs)
      self.gru = keras.layers.GRU(dim, name="gru")
    elif kind == "lstm":
      self.lstm = keras.layers.LSTM(dim, name="lstm")
    elif kind == "attention":
      self.recency_embedding = keras.layers.Embedding(length, dim, name="recency_embedding")
      self.score_hidden = keras.layers.Dense(dim, activation="tanh", name="score_hidden")
      self.score = keras.layers.Dense(1, name="score")

  def call(self, items: tf.Tensor) -> tf.Tensor:
    mask = items > 0
    embedded = self.item_embedding(items)
    if self.item_vectors is not None:
      vectors = (self.item_vectors(items) if isinstance(self.item_vectors, keras.layers.Layer)
                 else tf.gather(self.item_vectors, items))
      embedded += tf.cast(self.item_vector_adapter(vectors), embedded.dtype)
    if self.kind == "mean":
      weights = tf.cast(mask, embedded.dtype)
      weights /= tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
      return tf.einsum("bl,bld->bd", weights, embedded)
    if self.kind in ("gru", "lstm"):  # oldest first; masked steps keep the state
      recurrent = self.gru if self.kind == "gru" else self.lstm
      return recurrent(tf.reverse(embedded, [1]), mask=tf.reverse(mask, [1]))
    embedded += self.recency_embedding(tf.range(tf.shape(items)[1]))
    logits = tf.cast(tf.squeeze(self.score(self.score_hidden(embedded)), -1), tf.float32)
    weights = tf.nn.softmax(tf.where(mask, logits, -1e9)) * tf.cast(mask, tf.float32)
    return tf.einsum("bl,bld->bd", tf.cast(weights, embedded.dtype), embedded)
