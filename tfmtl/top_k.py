"""The one top-k over a catalogue: each query's best-scoring columns.

Training's `FactorizedTopK` metric, the export's brute-force and ScaNN
indexes, the full-catalogue evaluation and the user-similarity graph all
take their best items here: scores of queries against candidates, some
(row, column) pairs left out, the k best columns of each row, best first.
Left-out pairs score `EXCLUDED_SCORE`, so they come last and a caller can
tell them from real scores.

Example:

>>> import tensorflow as tf
>>> from tfmtl.top_k import top_k
>>> scores = tf.constant([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
>>> values, columns = top_k(scores, 2, excluded=tf.constant([[0, 1]]))  # row 0 without column 1
>>> columns.numpy().tolist()
[[2, 0], [0, 1]]
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

EXCLUDED_SCORE = float(np.finfo(np.float32).min)  # JSON-safe, unlike -inf


def top_k(scores: tf.Tensor, k, excluded: Optional[tf.Tensor] = None,
          excluded_score: float = EXCLUDED_SCORE) -> tuple[tf.Tensor, tf.Tensor]:
  """The `k` best scores of each row of `scores` [rows, columns] and their
  columns, [rows, k] each, best first; `excluded`: [n, 2] (row, column)
  pairs scored `excluded_score` first."""
  if excluded is not None:
    excluded = tf.cast(excluded, tf.int32)
    scores = tf.tensor_scatter_nd_update(
        scores, excluded, tf.fill(tf.shape(excluded)[:1], tf.constant(excluded_score,
                                                                      scores.dtype)))
  best = tf.math.top_k(scores, k=k)
  return best.values, best.indices


def top_k_dot(queries: tf.Tensor, candidates: tf.Tensor, k,
              excluded: Optional[tf.Tensor] = None, transposed: bool = False
              ) -> tuple[tf.Tensor, tf.Tensor]:
  """`top_k` of the dot products of `queries` [rows, dim] with
  `candidates` [columns, dim] (`transposed`: given as [dim, columns])."""
  scores = tf.linalg.matmul(queries, candidates, transpose_b=not transposed)
  return top_k(scores, k, excluded)
