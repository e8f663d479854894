"""The retrieval index of an export: the catalogue items that score best.

`export.index` picks one; both answer `top(query, n, exclude_columns)` with
scores and catalogue columns [batch, n], best first, places they cannot fill
(every other item excluded, or fewer found) at `EXCLUDED_SCORE`:

- `BruteForceIndex` (default): scores every item, query . candidate, exactly.
  It is plain TensorFlow, so stock TF Serving serves it.
- `PartitionedIndex`: the items clustered by k-means at export; a query
  scores the centroids, then only the items of its `nprobe` best
  partitions, one block each. Approximate, and also made of standard
  TensorFlow ops only.
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
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfmtl.config import ConfigError, PartitionedConfig, ScannConfig
from tfmtl.top_k import EXCLUDED_SCORE, top_k, top_k_dot

# `export.index`: BruteForceIndex, PartitionedIndex, ScannIndex
INDEXES = ("brute_force", "partitioned", "scann")


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


class PartitionedIndex(tf.Module):
  """Approximate top items: k-means partitions of `candidates` [items, dim].

  At build, scikit-learn's `MiniBatchKMeans` (seeded) clusters the items'
  embeddings, and each partition is stored as one block: `item_vectors`
  [partitions, size, dim] and `item_columns` [partitions, size] (the
  largest partition's size; -1 pads the others). A query scores the
  centroids, gathers its `nprobe` best blocks and scores them in one
  batched matmul; the best `n` plus as many as it excludes are then
  filtered (as `ScannIndex` does). With `nprobe` equal to the partitions it
  is exact.

  Args:
    candidates: the catalogue's embeddings, one row per item.
    options: `export.partitioned` (0s: from the catalogue's size,
      `partitioned_parameters`).
    centroids: an earlier index's centroids (`saved_centroids`): each item
      goes to its nearest one, without clustering again (`add-items`).
  """

  def __init__(self, candidates: np.ndarray, options: PartitionedConfig = PartitionedConfig(),
               centroids: Optional[np.ndarray] = None):
    super().__init__(name="partitioned_index")
    candidates = np.asarray(candidates, np.float32)
    self.num_items = len(candidates)
    if centroids is None:
      from sklearn.cluster import MiniBatchKMeans  # pylint: disable=import-outside-toplevel
      partitions, _ = partitioned_parameters(self.num_items, options)
      centroids = MiniBatchKMeans(partitions, random_state=options.seed, n_init=1,
                                  batch_size=min(self.num_items, 4096)
                                  ).fit(candidates).cluster_centers_
    centroids = np.asarray(centroids, np.float32)
    self.nprobe = probed_partitions(len(centroids), options)
    labels = _nearest(candidates, centroids)
    sizes = np.bincount(labels, minlength=len(centroids))
    order = np.argsort(labels, kind="stable")
    slots = np.arange(self.num_items) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    vectors = np.zeros((len(centroids), max(int(sizes.max()), 1), candidates.shape[1]),
                       np.float32)
    vectors[labels[order], slots] = candidates[order]
    columns = np.full(vectors.shape[:2], -1, np.int32)
    columns[labels[order], slots] = order
    self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
    self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors")
    self.item_columns = tf.Variable(columns, trainable=False, name="item_columns")

  def top(self, query, n, exclude_columns):
    """As `BruteForceIndex.top`, over the `nprobe` best partitions' items."""
    _, probed = tf.math.top_k(tf.matmul(query, self.centroids, transpose_b=True), self.nprobe)
    batch = tf.shape(query)[0]
    scores = tf.einsum("bd,bpsd->bps", query, tf.gather(self.item_vectors, probed))
    columns = tf.reshape(tf.gather(self.item_columns, probed), [batch, -1])
    scores = tf.where(columns >= 0, tf.reshape(scores, [batch, -1]), EXCLUDED_SCORE)
    asked = tf.minimum(n + tf.shape(exclude_columns)[1], tf.shape(scores)[1])
    values, places = top_k(scores, asked)
    columns = tf.gather(columns, places, batch_dims=1)
    missing = tf.maximum(n - asked, 0)  # fewer items probed than asked for
    values = tf.pad(values, [[0, 0], [0, missing]], constant_values=EXCLUDED_SCORE)
    columns = tf.pad(columns, [[0, 0], [0, missing]], constant_values=-1)
    excluded = tf.reduce_any(columns[:, :, None] == exclude_columns[:, None, :], axis=2)
    excluded |= columns < 0
    best, kept = top_k(values, n, tf.where(excluded))
    return best, tf.gather(columns, kept, batch_dims=1)


def _nearest(candidates: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
  """Each candidate's nearest centroid (squared distance), a chunk at a time."""
  squared = np.square(centroids).sum(axis=1)
  return np.concatenate([np.argmin(squared - 2 * candidates[start:start + chunk] @ centroids.T,
                                   axis=1)
                         for start in range(0, len(candidates), chunk)])


def saved_centroids(export_dir: str | Path) -> Optional[np.ndarray]:
  """The centroids of the partitioned index an export holds, or None."""
  reader = tf.train.load_checkpoint(str(Path(export_dir) / "variables" / "variables"))
  keys = [key for key in reader.get_variable_to_shape_map()
          if key.startswith("index/centroids/")]
  return reader.get_tensor(keys[0]) if keys else None


def partitioned_parameters(num_items: int, options: PartitionedConfig) -> tuple[int, int]:
  """(partitions, nprobe) of `options`, its 0s filled in from the catalogue.

  >>> partitioned_parameters(1_000_000, PartitionedConfig())
  (1000, 20)
  """
  partitions = min(options.partitions or max(1, round(math.sqrt(num_items))), num_items)
  return partitions, probed_partitions(partitions, options)


def probed_partitions(partitions: int, options: PartitionedConfig) -> int:
  """`options.nprobe`, or a fiftieth of the partitions (at least 8); at most all."""
  return min(options.nprobe or max(8, math.ceil(partitions / 50)), partitions)


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
