"""EASE (Steck 2019), the closed-form item-item model, as a teacher.

From the training interactions X (users x items, 1 where a user rated an
item), EASE's item weights are B = I - P diag(1 / diag(P)) with
P = (X^T X + lambda I)^-1 (so B's diagonal is 0), and a user's scores are
their row of X B. `EaseTeacher.fit` computes both in TensorFlow once and
keeps the score matrix; a batch's scores are a gather. It is also an
evaluation scorer (`tfmtl.evaluation.retrieval_metrics`), so EASE itself can
be measured beside its students.

>>> import numpy as np
>>> teacher = EaseTeacher.from_matrix(np.array([[0., 0., 0.], [1., 1., 0.], [0., 1., 1.]]),
...                                   l2=1.0, user_ids=["a", "b"])
>>> teacher.score_matrix.shape
TensorShape([3, 3])
>>> teacher.scores(["b"]).shape
TensorShape([1, 3])
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl.data.schema import ITEM_ID, USER_ID
from tfmtl.errors import ConfigError


class EaseTeacher:
  """Scores of every user (by encoded user index) over the catalogue.

  Args:
    score_matrix: [user indices, items] EASE scores, items in the student's
      catalogue order; row 0 is the unknown user's.
    user_ids: the user id of each later row (the vocabulary's order).
    catalogue: the item id of each column.
  """
  tasks: dict = {}  # no per-pair outputs: only the listwise term applies

  def __init__(self, score_matrix: tf.Tensor, user_ids=(), catalogue=()):
    self.score_matrix = score_matrix
    self.user_ids = pd.Index(list(user_ids))
    self.catalogue = np.asarray(catalogue, object)

  @classmethod
  def fit(cls, student, train: pd.DataFrame, l2: float) -> "EaseTeacher":
    """Fits EASE with L2 strength `l2` on the `train` interactions, for
    `student`'s users (its encoded user indices) and catalogue.

    Raises `ConfigError` when the item-item matrices would not fit in memory.
    """
    users, items = student.vocabulary.size(USER_ID), len(student.catalogue_item_ids)
    _check_memory(users, items)
    return cls.from_matrix(interaction_matrix(student, train), l2, student.vocabulary.user_ids,
                           student.catalogue_item_ids)

  @classmethod
  def from_matrix(cls, interactions: np.ndarray, l2: float, user_ids=(),
                  catalogue=()) -> "EaseTeacher":
    """Fits EASE on a [user indices, items] 0/1 matrix (see `__init__`)."""
    x = tf.constant(interactions, tf.float32)
    gram = tf.matmul(x, x, transpose_a=True) + l2 * tf.eye(x.shape[1])
    inverse = tf.linalg.inv(gram)
    weights = -inverse / tf.linalg.diag_part(inverse)[tf.newaxis, :]
    weights = tf.linalg.set_diag(weights, tf.zeros(x.shape[1]))
    return cls(tf.matmul(x, weights), user_ids, catalogue)

  def check_student(self, student) -> None:
    """Nothing to check: `fit` reads the student's own vocabulary."""

  def cache(self, student, examples) -> bool:  # pylint: disable=unused-argument
    """Nothing to cache: the score matrix is every user's scores already."""
    return False

  def catalogue_scores(self, features: dict[str, tf.Tensor],
                       taught=None) -> tuple[tf.Tensor, tf.Tensor]:
    """The batch's users' scores, [batch, items], and where they are known
    (every item of a user the training split has)."""
    del taught  # per-pair outputs: EASE has none
    return self.user_scores(tf.reshape(features[USER_ID], [-1]))

  def pair_scores(self, features: dict[str, tf.Tensor], columns: tf.Tensor,
                  taught=None) -> tuple[tf.Tensor, tf.Tensor]:
    """As `catalogue_scores`, of catalogue `columns` only: each example's
    own ([batch, n]) or the same for all ([n]); [batch, n] each."""
    del taught  # per-pair outputs: EASE has none
    users = tf.reshape(features[USER_ID], [-1])
    if columns.shape.rank == 1:
      columns = tf.broadcast_to(columns[tf.newaxis, :], [tf.size(users), tf.size(columns)])
    rows = tf.broadcast_to(tf.cast(users, columns.dtype)[:, tf.newaxis], tf.shape(columns))
    return tf.gather_nd(self.score_matrix, tf.stack([rows, columns], axis=-1)), rows > 0

  def user_scores(self, users: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`catalogue_scores` of student user indices [n]."""
    scores = tf.gather(self.score_matrix, users)
    return scores, tf.broadcast_to((users > 0)[:, tf.newaxis], tf.shape(scores))

  def scores(self, user_ids) -> tf.Tensor:
    """Scores of users by id, [users, items] (unknown users: row 0)."""
    return tf.gather(self.score_matrix, self.user_ids.get_indexer(list(user_ids)) + 1)

  def task_inputs(self, features):  # pylint: disable=unused-argument
    return None


def memory_shortfall(users: int, items: int) -> str:
  """Why EASE's matrices (3 items x items, 2 users x items, float32) do not
  fit (more than half the memory available now), or "" if they do."""
  needed = 4 * (3 * items * items + 2 * users * items)
  try:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):  # not a POSIX system
    return ""
  if needed <= available / 2:
    return ""
  return (f"ease needs about {needed / 2**30:.1f} GiB for {items:,} items and {users:,} "
          f"users, more than half of the {available / 2**30:.1f} GiB available")


def _check_memory(users: int, items: int) -> None:
  """ConfigError when EASE does not fit in memory (`memory_shortfall`)."""
  shortfall = memory_shortfall(users, items)
  if shortfall:
    raise ConfigError(f"distillation.teacher: {shortfall}; distil from a tfmtl run instead")


def fit_baseline(train: pd.DataFrame, catalogue: np.ndarray, l2: float) -> EaseTeacher:
  """EASE fitted on `train` over `catalogue` (item ids), as an evaluation
  scorer of the users `train` has (others: row 0, no scores)."""
  users = pd.Index(pd.unique(train[USER_ID].to_numpy(object)))
  items = pd.Index(catalogue).get_indexer(train[ITEM_ID].to_numpy(object))
  known = items >= 0
  matrix = np.zeros((len(users) + 1, len(catalogue)), np.float32)
  matrix[users.get_indexer(train[USER_ID].to_numpy(object))[known] + 1, items[known]] = 1.0
  return EaseTeacher.from_matrix(matrix, l2, users, catalogue)


def interaction_matrix(student, train: pd.DataFrame) -> np.ndarray:
  """[user indices, items] float32: 1 where `train` has the user (by
  `student`'s encoded user index) and the catalogue item, else 0."""
  matrix = np.zeros((student.vocabulary.size(USER_ID), len(student.catalogue_item_ids)),
                    np.float32)
  matrix[training_pairs(student, train)] = 1.0
  return matrix


def training_pairs(student, train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
  """(user indices, catalogue columns) of `train`'s interactions with
  catalogue items, by `student`'s encoded user index (0: unknown users)."""
  users = pd.Index(student.vocabulary.user_ids).get_indexer(train[USER_ID].to_numpy(object))
  items = pd.Index(student.catalogue_item_ids).get_indexer(train[ITEM_ID].to_numpy(object))
  known = items >= 0
  return users[known] + 1, items[known]
