"""Ranking heads: a (query, candidate) embedding pair -> one logit per task.

The pair is read as [query, candidate, query * candidate], passed through a
multi-task block (what the tasks share, `tfmtl.layers.multitask`), and each
task's representation through its own MLP to a logit.

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers import Independent, RankingHeads
>>> heads = RankingHeads(Independent(["rating"]), {"rating": [16]})
>>> heads(tf.ones([4, 8]), tf.ones([4, 8]))["rating"].shape
TensorShape([4, 1])
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from tfmtl.layers.mlp import apply_stack, dense_stack


class RankingHeads(keras.layers.Layer):
  """A multi-task block, then an MLP per task ending in one logit.

  Args:
    block: a multi-task block whose tasks are the keys of `head_layers`.
    head_layers: hidden widths of each task's head.
  """

  def __init__(self, block: keras.layers.Layer, head_layers: dict[str, Sequence[int]],
               **kwargs):
    super().__init__(**kwargs)
    self.block = block
    self.heads = {task: dense_stack(layers, f"{task}_head")
                  + [keras.layers.Dense(1, name=f"{task}_head_logit")]
                  for task, layers in head_layers.items()}

  def call(self, query_embeddings: tf.Tensor,
           candidate_embeddings: tf.Tensor) -> dict[str, tf.Tensor]:
    pair = tf.concat([query_embeddings, candidate_embeddings,
                      query_embeddings * candidate_embeddings], axis=-1)
    representations = self.block(pair)
    return {task: apply_stack(layers, representations[task])
            for task, layers in self.heads.items()}
