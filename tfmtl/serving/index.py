"""The retrieval index of an export: the catalogue items that score best.

`export.index` picks one; both answer `top(query, n, exclude_columns)` with
scores and catalogue columns [batch, n], best first, places they cannot fill
(every other item excluded, or fewer found) at `EXCLUDED_SCORE`:

- `BruteForceIndex` (default): scores every item, query . candidate, exactly.
  It is plain TensorFlow, so stock TF Serving serves it.
- `ScannIndex`: TFRS's `ScaNN` layer (partitions plus asymmetric hashing,
  then exact rescoring of a shortlist). It needs the `scann` extra, whose ops
  are built for TensorFlow 2.20: `pip install "tfmtl[scann]"` in its own
  virtual environment. TF Serving serves it only from a build with ScaNN's
  ops (google/tf-serving-scann; TFRS issues 216 and 297).

Example:

>>> import numpy as np, tensorflow as tf
>>> index = BruteForceIndex(tf.constant([[1.0, 2.0, 3.0]]))  # [dim, items]
>>> scores, columns = index.top(tf.constant([[1.0]]), 2, tf.constant([[2]]))
>>> columns.numpy().tolist(), scores.numpy().tolist()
([[1, 0]], [[2.0, 1.0]])
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmtl.config import ConfigError, ScannConfig
from tfmtl.top_k import EXCLUDED_SCORE, top_k, top_k_dot

INDEXES = ("brute_force", "scann")  # `export.index`: BruteForceIndex, ScannIndex


class BruteForceIndex(tf.Module):
  """Exact top items over `candidate_matrix`, the catalogue's [dim, items]."""

  def __init__(self, candidate_matrix):
    super().__init__(name="brute_force_index")
    self.candidate_matrix = candidate_matrix

  def top(self, query, n, exclude_columns):
    """Best `n` items per query row, `exclude_columns` [batch, m] left out
    (-1: nothing)."""
    known = tf.where(exclude_columns >= 0)  # [m, 2]: (row, position)
    excluded = tf.stack([tf.cast(known[:, 0], tf.int32),
                         tf.gather_nd(exclude_columns, known)], axis=1)  # (row, column)
    return top_k_dot(query, self.candidate_matrix, n, excluded, transposed=True)


class ScannIndex(tf.Module):
  """Approximate top items: TFRS's `ScaNN` layer over `candidates` [items, dim].

  Args:
    candidates: the catalogue's embeddings, one row per item.
    wanted: the most items a signature returns by default.
    options: `export.scann`.
  """

  def __init__(self, candidates: np.ndarray, wanted: int, options: ScannConfig):
    super().__init__(name="scann_index")
    require_scann()
    import tensorflow_recommenders as tfrs
    self.num_items = len(candidates)
    self.layer = tfrs.layers.factorized_top_k.ScaNN(
        k=wanted, **scann_parameters(self.num_items, wanted, options))
    self.layer.index(tf.constant(candidates, tf.float32))

  def top(self, query, n, exclude_columns):
    """As `BruteForceIndex.top`; asks ScaNN for `n` plus the excluded."""
    asked = tf.minimum(n + tf.shape(exclude_columns)[1], self.num_items)
    scores, columns = self.layer(query, k=asked)
    missing = tf.maximum(n - tf.shape(scores)[1], 0)  # ScaNN found fewer
    scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=EXCLUDED_SCORE)
    columns = tf.pad(columns, [[0, 0], [0, missing]])
    excluded = tf.reduce_any(columns[:, :, None] == exclude_columns[:, None, :], axis=2)
    values, positions = top_k(scores, n, tf.where(excluded))
    return values, tf.gather(columns, positions, batch_dims=1)


def scann_parameters(num_items: int, wanted: int, options: ScannConfig) -> dict:
  """The `ScaNN` layer's arguments, with `options`' zeros filled in.

  >>> scann_parameters(1_000_000, 100, ScannConfig())["num_leaves_to_search"]
  100
  """
  leaves = options.num_leaves or max(1, round(math.sqrt(num_items)))
  leaves = min(leaves, num_items)
  searched = options.num_leaves_to_search or max(
      math.ceil(leaves / 10), math.ceil(4 * wanted * leaves / num_items))
  return {"num_leaves": leaves,
          "num_leaves_to_search": min(searched, leaves),
          "num_reordering_candidates": min(options.num_reordering_candidates or 4 * wanted,
                                           num_items),
          "dimensions_per_block": options.dimensions_per_block,
          "training_iterations": options.training_iterations}


def require_scann() -> None:
  """Raises a ConfigError saying how to install ScaNN unless its ops load."""
  try:
    import scann  # noqa: F401  (registers ScaNN's TensorFlow ops)
  except (ImportError, tf.errors.NotFoundError) as error:
    raise ConfigError(
        f"export.index: scann needs the scann package with TensorFlow {tf.__version__} "
        f"({type(error).__name__}: {error}). Its ops are built for TensorFlow 2.20: "
        "install `pip install \"tfmtl[scann]\"` in a virtual environment of its own, "
        "or export with index: brute_force") from None
