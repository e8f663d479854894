"""Label propagation over a user-user similarity graph (sparse, to 1M users).

Users with few interactions say little about their interests; their
neighbours say more. `user_vectors` embeds users by a truncated SVD of the
training interaction matrix, `knn_graph` links each user to its k most
similar users (cosine; exact up to `exact_limit` users, random-hyperplane
LSH beyond), and `spread_labels` runs label spreading (Zhou et al. 2004):
`F <- alpha * S @ F + (1 - alpha) * Y` with `S = D^-1/2 W D^-1/2`, where Y
holds the labels of users with at least `min_interactions` training
interactions (their share of each genre, `interest_labels`) and zeros for
the others. The rows of F, normalised, become a user feature
(`propagated_<feature>`, a vector the query tower reads): `add_propagated_feature`.

Example:

>>> import numpy as np, scipy.sparse as sp
>>> graph = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float))
>>> labels = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # user 1 unknown
>>> spread_labels(graph, labels, alpha=0.5).round(3)
array([[0.875, 0.125],
       [0.5  , 0.5  ],
       [0.125, 0.875]])
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from tfmtl.config import FeatureConfig, PropagationConfig
from tfmtl.data.schema import ITEM_ID, USER_ID, DataError, InteractionData
from tfmtl.top_k import top_k_dot

logger = logging.getLogger("tfmtl")


def interaction_matrix(train: pd.DataFrame, users: pd.Index, items: pd.Index) -> sp.csr_matrix:
  """Binary users x items matrix of the training interactions."""
  rows = users.get_indexer(train[USER_ID].astype(str))
  cols = items.get_indexer(train[ITEM_ID].astype(str))
  keep = (rows >= 0) & (cols >= 0)
  matrix = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])),
                         shape=(len(users), len(items)))
  matrix.data[:] = 1.0  # repeated pairs count once
  return matrix


def user_vectors(matrix: sp.csr_matrix, dim: int = 32, seed: int = 0) -> np.ndarray:
  """Users embedded by a truncated SVD of their (row-normalised) interactions."""
  norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
  normalised = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix
  dim = max(1, min(dim, min(matrix.shape) - 1))
  u, s, _ = svds(normalised.astype(np.float64), k=dim,
                 v0=np.random.default_rng(seed).random(min(matrix.shape)))
  return (u * s).astype(np.float32)


def knn_graph(vectors: np.ndarray, k: int = 10, exact_limit: int = 50_000,
              tables: int = 8, bucket_size: int = 256, seed: int = 0) -> sp.csr_matrix:
  """Symmetric k-nearest-neighbour graph by cosine similarity (weights > 0).

  Exact (blocked matrix products) up to `exact_limit` users; beyond, each of
  `tables` random-hyperplane hash tables buckets the users (about
  `bucket_size` per bucket) and neighbours are searched within buckets.
  """
  n = len(vectors)
  unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
  unit = unit.astype(np.float32)
  if n <= exact_limit:
    candidates = [_top_k(unit, np.arange(n), np.arange(n), k)]
  else:
    rng = np.random.default_rng(seed)
    bits = max(1, int(np.ceil(np.log2(n / bucket_size))))
    candidates = []
    for _ in range(tables):
      codes = (unit @ rng.standard_normal((unit.shape[1], bits)).astype(np.float32) > 0
               ) @ (1 << np.arange(bits))
      order = np.argsort(codes, kind="stable")
      bounds = np.flatnonzero(np.diff(codes[order])) + 1
      for members in np.split(order, bounds):
        candidates.append(_top_k(unit, members, members, k))
  rows, cols, sims = (np.concatenate(parts) for parts in zip(*candidates))
  best = pd.DataFrame({"row": rows, "col": cols, "sim": sims}).drop_duplicates(["row", "col"])
  best = best[best["sim"] > 0].sort_values(["row", "sim"], ascending=[True, False])
  best = best.groupby("row", sort=False).head(k)
  graph = sp.csr_matrix((best["sim"].to_numpy(np.float32),
                         (best["row"].to_numpy(), best["col"].to_numpy())), shape=(n, n))
  return graph.maximum(graph.T).tocsr()


def _top_k(unit: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int, block: int = 2048):
  """(row, col, similarity) of each row's k most similar cols, itself excluded."""
  out_rows, out_cols, out_sims = [], [], []
  keep = min(k, len(cols) - 1)
  if keep < 1:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
  for start in range(0, len(rows), block):
    batch = rows[start:start + block]
    itself = np.argwhere(batch[:, None] == cols[None, :])  # (row, column) of each row's own
    sims, top = (tensor.numpy() for tensor in top_k_dot(unit[batch], unit[cols], keep,
                                                        itself if len(itself) else None))
    out_rows.append(np.repeat(batch, keep))
    out_cols.append(cols[top].ravel())
    out_sims.append(sims.ravel())
  return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_sims)


def spread_labels(graph: sp.csr_matrix, labels: np.ndarray, alpha: float = 0.8,
                  iterations: int = 30) -> np.ndarray:
  """Label spreading: `F <- alpha S F + (1 - alpha) Y`, rows normalised to sum 1.

  `labels` (Y) has a row per graph node, zeros where unknown. Rows that no
  label reaches stay zero.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"propagation.alpha: {alpha} must be between 0 and 1")
  degree = np.asarray(graph.sum(axis=1)).ravel()
  scale = sp.diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
  normalised = (scale @ graph @ scale).tocsr()
  spread = labels.astype(np.float64)
  for _ in range(iterations):
    spread = alpha * (normalised @ spread) + (1 - alpha) * labels
  totals = spread.sum(axis=1, keepdims=True)
  return np.where(totals > 0, spread / np.where(totals > 0, totals, 1.0), 0.0)


def interest_labels(train: pd.DataFrame, items: pd.DataFrame, users: pd.Index,
                    feature: str, separator: str = "|") -> tuple[np.ndarray, list[str]]:
  """Each user's share of each token of an item feature among their training
  items ([users, tokens]), and the tokens."""
  item_tokens, tokens = _item_tokens(items, feature, separator)
  matrix = interaction_matrix(train, users, pd.Index(items[ITEM_ID].astype(str)))
  return _token_shares(matrix, item_tokens), tokens


def _item_tokens(items: pd.DataFrame, feature: str,
                 separator: str) -> tuple[sp.csr_matrix, list[str]]:
  """Items x tokens multi-hot matrix of a `separator`-joined item feature."""
  values = items[feature].fillna("").astype(str).reset_index(drop=True)
  exploded = values.str.split(separator).explode()
  exploded = exploded[exploded != ""]
  tokens = sorted(exploded.unique())
  matrix = sp.csr_matrix(
      (np.ones(len(exploded)), (exploded.index.to_numpy(),
                                pd.Index(tokens).get_indexer(exploded.to_numpy()))),
      shape=(len(values), len(tokens)))
  return matrix, tokens


def _token_shares(interactions: sp.csr_matrix, item_tokens: sp.csr_matrix) -> np.ndarray:
  counts = np.asarray((interactions @ item_tokens).todense())
  totals = counts.sum(axis=1, keepdims=True)
  return np.where(totals > 0, counts / np.maximum(totals, 1.0), 0.0)


def add_propagated_feature(data: InteractionData, train: pd.DataFrame,
                           config: PropagationConfig) -> InteractionData:
  """`data` with the user feature `propagated_<feature>` (module doc), built
  from `train` only."""
  if config.feature not in data.item_features or \
      data.item_features[config.feature].type != "multi_categorical":
    raise DataError(f"propagation.feature: {config.feature!r} is not a multi_categorical item "
                    f"feature (item features: {sorted(data.item_features)})")
  users = pd.Index(data.users[USER_ID].astype(str))
  matrix = interaction_matrix(train, users, pd.Index(data.items[ITEM_ID].astype(str)))
  item_tokens, tokens = _item_tokens(data.items, config.feature,
                                     data.item_features[config.feature].separator)
  labels = _token_shares(matrix, item_tokens)
  counts = np.asarray(matrix.sum(axis=1)).ravel()
  known = counts >= config.min_interactions
  graph = knn_graph(user_vectors(matrix, config.dim), config.k)
  spread = spread_labels(graph, labels * known[:, None], config.alpha)
  name = f"propagated_{config.feature}"
  logger.info("propagation: %s over %d tokens from %d of %d users (>= %d interactions), "
              "k=%d", name, len(tokens), int(known.sum()), len(users), config.min_interactions,
              config.k)
  return dataclasses.replace(
      data, users=data.users.assign(**{name: list(spread.astype(np.float32))}),
      user_features={**data.user_features, name: FeatureConfig("vector", dim=len(tokens))})
