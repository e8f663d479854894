"""Mixed-dimension embeddings: wide rows for frequent ids, narrow for rare ones.

Ginart et al. 2019, "Mixed dimension embeddings with application to
memory-efficient recommendation systems". Vocabularies list ids most
frequent first (index 0 is OOV), so cutting the index range into blocks
cuts it by training frequency. Each block is its own table of its own
width, projected (a linear map, no bias) to the common output width: a
frequent id gets many parameters of its own, a rare one few.

Example (10 ids: the first 3 indices 6 dimensions wide, the other 7 only 2):

>>> import tensorflow as tf
>>> from tfmtl.layers import MixedDimensionEmbedding
>>> embedding = MixedDimensionEmbedding(10, 4, [(0.3, 6), (0.7, 2)])
>>> embedding(tf.constant([0, 9])).shape
TensorShape([2, 4])
>>> embedding.bounds, embedding.count_params()  # 3*6 + 6*4 and 7*2 + 2*4
((0, 3, 10), 64)
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras


class MixedDimensionEmbedding(keras.layers.Layer):
  """Index -> embedding like `keras.layers.Embedding`, in frequency blocks.

  Args:
    input_dim: number of indices (OOV included), most frequent first.
    output_dim: width of every output embedding.
    blocks: (share of the indices, width) per block, from the most frequent
      indices on; the shares sum to 1 and every block gets at least one index.
    embeddings_regularizer: applied to each block's table.
  """

  def __init__(self, input_dim: int, output_dim: int, blocks: Sequence[tuple[float, int]],
               embeddings_regularizer: Optional[keras.regularizers.Regularizer] = None,
               **kwargs):
    super().__init__(**kwargs)
    if input_dim < len(blocks):
      raise ValueError(f"{self.name}: {len(blocks)} embedding blocks need at least as many "
                       f"indices, got {input_dim}")
    ends = np.rint(np.cumsum([share for share, _ in blocks]) * input_dim).astype(int)
    bounds = [0]
    for i, end in enumerate(ends):  # at least one index per block, all indices covered
      room = input_dim - (len(blocks) - 1 - i)
      bounds.append(input_dim if i == len(blocks) - 1 else
                    int(min(max(end, bounds[-1] + 1), room)))
    self.input_dim = input_dim
    self.bounds = tuple(bounds)  # block i holds indices bounds[i] to bounds[i + 1] - 1
    self.output_dim = output_dim
    self.blocks = tuple((float(share), int(width)) for share, width in blocks)
    self.embeddings_regularizer = embeddings_regularizer

  def build(self, input_shape):
    spans = list(zip(self.blocks, self.bounds, self.bounds[1:]))
    self.tables = [self.add_weight(f"block_{i}_embeddings", [end - start, width],
                                   initializer="uniform",
                                   regularizer=self.embeddings_regularizer)
                   for i, ((_, width), start, end) in enumerate(spans)]
    self.projections = [self.add_weight(f"block_{i}_projection", [width, self.output_dim],
                                        initializer="glorot_uniform")
                        for i, (_, width) in enumerate(self.blocks)]
    super().build(input_shape)

  def call(self, indices: tf.Tensor) -> tf.Tensor:
    indices = tf.cast(indices, tf.int32)
    outputs = tf.zeros([tf.size(indices), self.output_dim], self.compute_dtype)
    flat = tf.reshape(indices, [-1])
    for table, projection, start, end in zip(self.tables, self.projections, self.bounds,
                                             self.bounds[1:]):
      inside = tf.where((flat >= start) & (flat < end))
      rows = tf.gather(table, tf.gather_nd(flat, inside) - start)
      outputs = tf.tensor_scatter_nd_update(outputs, inside, tf.matmul(rows, projection))
    return tf.reshape(outputs, tf.concat([tf.shape(indices), [self.output_dim]], 0))
