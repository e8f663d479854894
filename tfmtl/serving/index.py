"""The retrieval index of an export: the catalogue items that score best.

`export.index` picks one; both answer `top(query, n, exclude_columns)` with
scores and catalogue columns [batch, n], best first, places they cannot fill
(every other item excluded, or fewer found) at `EXCLUDED_SCORE`:

- `BruteForceIndex` (default): scores every item, query . candidate, exactly.
  It is plain TensorFlow, so stock TF Serving serves it.
- `PartitionedIndex`: the items clustered by k-means at export; a query
  estimates each partition's best score from its centroid, spread and
  farthest item, then scores only the items of its `nprobe` best
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
# k-means fits the centroids on at most this many items per partition (a seeded sample).
KMEANS_SAMPLE = 32
# Items go to the nearest of more centroids than this through a coarse level
# of centroid groups first, searched in COARSE_PROBES groups (`nearest_centroids`).
COARSE_ABOVE = 4096
COARSE_PROBES = 4
# A default `nprobe` scores at least this many items (`probed_partitions`).
PROBED_ITEMS = 800
# `export.partitioned.quantization`: how `PartitionedIndex` stores item vectors
QUANTIZATIONS = ("none", "bfloat16", "int8")


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
  embeddings. Each partition is stored as blocks of a fixed size (the mean
  partition's; -1 pads a partition's last block): `item_vectors` [blocks,
  size, dim], `item_columns` [blocks, size] and `block_partitions`
  [blocks]. A query ranks the partitions by an estimate of their best
  item's score, the larger of two: the centroid's score plus the query's
  norm times the partition's `spread` (its items' RMS distance to the
  centroid times sqrt(2 ln size / dim): the expected largest of `size`
  Gaussian projections), and the score of its item farthest from the
  centroid, which finds a partition holding an outlying group of items
  whose centroid scores low. It gathers the blocks of its `nprobe` best
  partitions (as many blocks as `nprobe` partitions hold on average)
  and scores them in one batched matmul. A quantized index
  (`bfloat16`, or `int8` with a scale per dimension) scores the blocks
  approximately, then re-scores its best `rescore` items exactly from
  `candidate_matrix`. `bfloat16` blocks are scored in bfloat16: half the
  bytes read per item, fast where the CPU has bfloat16 arithmetic
  (AVX512_BF16, AMX) and slow where it does not; `int8` blocks are cast to
  float32 to be scored. The best `n` plus as many as it excludes are then
  filtered (as `ScannIndex` does). With `nprobe` equal to the partitions it
  is exact.

  Args:
    candidates: the catalogue's embeddings, one row per item.
    options: `export.partitioned` (0s: from the catalogue's size,
      `partitioned_parameters`).
    centroids: an earlier index's centroids (`saved_centroids`): each item
      goes to its nearest one, without clustering again (`add-items`).
    candidate_matrix: the catalogue's embeddings [dim, items] as a variable
      the export already holds, for the exact re-score (default: its own).
  """

  def __init__(self, candidates: np.ndarray, options: PartitionedConfig = PartitionedConfig(),
               centroids: Optional[np.ndarray] = None,
               candidate_matrix: Optional[tf.Variable] = None):
    super().__init__(name="partitioned_index")
    candidates = np.asarray(candidates, np.float32)
    num_items = len(candidates)
    if centroids is None:
      from sklearn.cluster import MiniBatchKMeans  # pylint: disable=import-outside-toplevel
      partitions, _ = partitioned_parameters(num_items, options)
      sample = np.random.default_rng(options.seed).permutation(num_items)[
          :KMEANS_SAMPLE * partitions]
      centroids = MiniBatchKMeans(partitions, random_state=options.seed, n_init=1,
                                  batch_size=min(len(sample), 4096)
                                  ).fit(candidates[np.sort(sample)]).cluster_centers_
    centroids = np.asarray(centroids, np.float32)
    labels = nearest_centroids(candidates, centroids, seed=options.seed)
    sizes = np.bincount(labels, minlength=len(centroids))
    block_size = max(1, math.ceil(num_items / len(centroids)))
    blocks = -(-sizes // block_size)  # per partition; none for an empty one
    order = np.argsort(labels, kind="stable")
    places = np.arange(num_items) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = (np.cumsum(blocks) - blocks)[labels[order]] + places // block_size
    vectors = np.zeros((max(int(blocks.sum()), 1), block_size, candidates.shape[1]), np.float32)
    vectors[rows, places % block_size] = candidates[order]
    columns = np.full(vectors.shape[:2], -1, np.int32)
    columns[rows, places % block_size] = order
    self.quantization = options.quantization
    self.rescore = options.rescore
    nprobe = probed_partitions(len(centroids), options, num_items)
    self.probed_blocks = min(len(vectors), math.ceil(nprobe * len(vectors) / len(centroids)))
    self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
    spreads, farthest = partition_spreads(candidates, centroids, labels)
    self.partition_spreads = tf.Variable(spreads, trainable=False, name="partition_spreads")
    self.farthest_items = tf.Variable(candidates[farthest], trainable=False,
                                      name="farthest_items")
    self.block_partitions = tf.Variable(np.repeat(np.arange(len(centroids)), blocks)
                                        .astype(np.int32), trainable=False,
                                        name="block_partitions")
    self.item_columns = tf.Variable(columns, trainable=False, name="item_columns")
    self.scale = None
    if self.quantization == "int8":
      scale = np.maximum(np.abs(candidates).max(axis=0), 1e-12) / 127
      vectors = np.round(vectors / scale).astype(np.int8)
      self.scale = tf.Variable(scale.astype(np.float32), trainable=False, name="scale")
    self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors",
                                    dtype=tf.bfloat16 if self.quantization == "bfloat16"
                                    else None)
    if self.quantization != "none" and candidate_matrix is None:
      candidate_matrix = tf.Variable(candidates.T, trainable=False, name="candidate_matrix")
    self.candidate_matrix = candidate_matrix if self.quantization != "none" else None

  def top(self, query, n, exclude_columns):
    """As `BruteForceIndex.top`, over the `nprobe` best partitions' items."""
    batch = tf.shape(query)[0]
    best_scores = tf.maximum(  # each partition's best item's, estimated: [batch, partitions]
        tf.matmul(query, self.centroids, transpose_b=True)
        + tf.norm(query, axis=1, keepdims=True) * self.partition_spreads,
        tf.matmul(query, self.farthest_items, transpose_b=True))
    _, probed = tf.math.top_k(tf.gather(best_scores, self.block_partitions, axis=1),
                              self.probed_blocks)  # a partition's blocks tie: all, in order
    vectors = tf.gather(self.item_vectors, probed)  # [batch, probed, size, dim]
    if self.quantization == "int8":  # TensorFlow has no int8 matmul: scored in float32
      scores = tf.einsum("bd,bpsd->bps", query * self.scale, tf.cast(vectors, tf.float32))
    else:  # float32, or bfloat16 scored in bfloat16
      scores = tf.einsum("bd,bpsd->bps", tf.cast(query, vectors.dtype), vectors)
    scores = tf.reshape(tf.cast(scores, tf.float32), [batch, -1])
    columns = tf.reshape(tf.gather(self.item_columns, probed), [batch, -1])
    scores = tf.where(columns >= 0, scores, EXCLUDED_SCORE)
    asked = tf.minimum(n + tf.shape(exclude_columns)[1], tf.shape(scores)[1])
    if self.quantization != "none":
      scores, columns = self._rescored(query, scores, columns, asked)
    values, places = top_k(scores, asked)
    columns = tf.gather(columns, places, batch_dims=1)
    missing = tf.maximum(n - asked, 0)  # fewer items probed than asked for
    values = tf.pad(values, [[0, 0], [0, missing]], constant_values=EXCLUDED_SCORE)
    columns = tf.pad(columns, [[0, 0], [0, missing]], constant_values=-1)
    excluded = tf.reduce_any(columns[:, :, None] == exclude_columns[:, None, :], axis=2)
    excluded |= columns < 0
    best, kept = top_k(values, n, tf.where(excluded))
    return best, tf.gather(columns, kept, batch_dims=1)

  def _rescored(self, query, scores, columns, asked):
    """The best `rescore` of the approximate `scores` (at least `asked`),
    scored exactly: (scores, columns) [batch, depth]."""
    depth = tf.maximum(asked, self.rescore or tf.maximum(4 * asked, 400))
    _, places = top_k(scores, tf.minimum(depth, tf.shape(scores)[1]))
    columns = tf.gather(columns, places, batch_dims=1)
    vectors = tf.gather(self.candidate_matrix, tf.maximum(columns, 0), axis=1)  # [dim, b, depth]
    return tf.where(columns >= 0, tf.einsum("bd,dbr->br", query, vectors), EXCLUDED_SCORE), columns


def partition_spreads(candidates: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                      chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """Each partition's spread, float32 [partitions]: its items' RMS distance
  to the centroid times sqrt(2 ln size / dim) (size at least 2; 0 for an
  empty partition), and the row of its item farthest from the centroid,
  int [partitions] (0 for an empty one). Distances `chunk` items at a time.

  >>> spreads, farthest = partition_spreads(
  ...     np.array([[0., 0.], [3., 4.], [1., 0.]]), np.zeros((2, 2)), np.array([0, 0, 1]))
  >>> farthest.tolist(), [f"{spread:.4f}" for spread in spreads]
  ([1, 2], ['2.9435', '0.8326'])
  """
  distances = np.concatenate([
      np.linalg.norm(candidates[start:start + chunk] - centroids[labels[start:start + chunk]],
                     axis=1) for start in range(0, len(candidates), chunk)])
  sizes = np.bincount(labels, minlength=len(centroids))
  rms = np.sqrt(np.bincount(labels, distances ** 2, len(centroids)) / np.maximum(sizes, 1))
  spreads = rms * np.sqrt(2 * np.log(np.maximum(sizes, 2)) / candidates.shape[1])
  last = np.lexsort((distances, labels))[np.cumsum(sizes) - 1]  # each partition's farthest
  return spreads.astype(np.float32), np.where(sizes > 0, last, 0)


def nearest_centroids(candidates: np.ndarray, centroids: np.ndarray, seed: int = 0,
                      coarse_above: int = COARSE_ABOVE, chunk: int = 65536) -> np.ndarray:
  """Each candidate's nearest centroid (squared distance), int32 [items].

  Up to `coarse_above` centroids every one is scored. Beyond, k-means
  (seeded) groups the centroids into about sqrt(centroids) groups; each
  candidate scores the groups' centres, then only the centroids of its
  `COARSE_PROBES` nearest groups (for 25,000 centroids, about a fortieth
  of them). Most candidates get their nearest centroid, the others one
  near it (`validate`'s recall check measures what that costs).
  Candidates are scored `chunk` at a time.
  """
  centroids = np.asarray(centroids, np.float32)
  if len(centroids) <= coarse_above:
    return _best(candidates, centroids, 1, chunk)[:, 0]
  from sklearn.cluster import MiniBatchKMeans  # pylint: disable=import-outside-toplevel
  coarse = MiniBatchKMeans(round(math.sqrt(len(centroids))), random_state=seed, n_init=1,
                           batch_size=4096).fit(centroids)
  probes = min(COARSE_PROBES, coarse.n_clusters)
  groups = _best(candidates, coarse.cluster_centers_.astype(np.float32), probes,
                 chunk).reshape(-1)
  order = np.argsort(groups, kind="stable")  # (item, group) pairs, by group
  starts = np.searchsorted(groups[order], np.arange(coarse.n_clusters + 1))
  best = np.full(len(candidates), -np.inf, np.float32)
  labels = np.zeros(len(candidates), np.int32)
  half_squared = 0.5 * np.sum(np.square(centroids), axis=1)
  for group in range(coarse.n_clusters):
    members = np.flatnonzero(coarse.labels_ == group)
    if not len(members):  # a group k-means left empty
      continue
    searching = order[starts[group]:starts[group + 1]] // probes
    for start in range(0, len(searching), chunk):
      items = searching[start:start + chunk]
      scores = candidates[items] @ centroids[members].T - half_squared[members]
      place = np.argmax(scores, axis=1)
      score = scores[np.arange(len(items)), place]
      better = score > best[items]
      best[items[better]] = score[better]
      labels[items[better]] = members[place[better]]
  return labels


def _best(candidates: np.ndarray, centroids: np.ndarray, n: int, chunk: int) -> np.ndarray:
  """Each candidate's `n` nearest centroids (squared distance), nearest
  first, int32 [items, n], a chunk of candidates at a time."""
  centroids = tf.constant(centroids)
  half_squared = 0.5 * tf.reduce_sum(tf.square(centroids), axis=1)
  nearest = tf.function(lambda rows: tf.math.top_k(
      tf.matmul(rows, centroids, transpose_b=True) - half_squared, n).indices)
  return np.concatenate([nearest(tf.constant(candidates[start:start + chunk])).numpy()
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
  (8000, 200)
  """
  partitions = min(options.partitions or max(1, round(8 * math.sqrt(num_items))), num_items)
  return partitions, probed_partitions(partitions, options, num_items)


def probed_partitions(partitions: int, options: PartitionedConfig, num_items: int) -> int:
  """`options.nprobe`, or a fortieth of the partitions and at least as
  many as hold `PROBED_ITEMS` items on average; at most all."""
  default = max(math.ceil(partitions / 40), math.ceil(PROBED_ITEMS * partitions / num_items))
  return min(options.nprobe or default, partitions)


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
