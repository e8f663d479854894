"""A trained tfmtl model as a teacher: `distillation.teacher: runs/<name>`, or
`Distillation(trained_model)` in Python (`tfmtl.distillation`).

The teacher may have learnt other vocabularies than the student (trained on
other data, or on the same data with other features): `check_student` then
maps the student's encoded batches to the teacher's by the raw strings
(`VocabularyMap`), and examples whose user or item the teacher does not
know get no teacher term.

`cache(student, examples)` computes the teacher's query embedding of each
student user once, from one training example each, in batches, and takes
its candidate embedding of each item from its own catalogue (so a teacher
that reads item text the student does not still places each item); every
step then gathers them instead of running the teacher's towers. A teacher
whose query reads a history (which changes from example to example) is not
cached.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl.data.schema import HISTORY, ITEM_ID, USER_ID
from tfmtl.tasks import TaskInputs


class ModelTeacher:
  """Scores and per-task outputs of a trained `MultiTaskModel`; it is never
  updated. Until `check_student` says otherwise, it reads the student's
  encoded features and catalogue as they are.

  Args:
    model: the teacher model.
  """

  def __init__(self, model):
    self.model = model
    self.tasks = model.tasks
    self.vocabulary_map: Optional[VocabularyMap] = None
    self._own_catalogue = tf.constant(model.catalogue_embeddings())  # its order, [items, dim]
    self._catalogue = self._own_catalogue  # in the student's catalogue order (check_student)
    self._catalogue_known = tf.ones([self._catalogue.shape[0]], tf.bool)
    self.cached: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}  # side -> (embeddings, known)

  def check_student(self, student) -> None:
    """Adapts to `student`: its vocabulary (mapped by raw strings when it
    differs) and its catalogue's order (items the teacher lacks: unknown)."""
    mine, theirs = student.vocabulary, self.model.vocabulary
    if any(getattr(mine, field) != getattr(theirs, field) for field in (
        "user_ids", "item_ids", "tokens", "boundaries", "user_features", "item_features")):
      self.vocabulary_map = VocabularyMap(mine, theirs)
    positions = pd.Index(self.model.catalogue_item_ids).get_indexer(student.catalogue_item_ids)
    self._catalogue = tf.gather(self._own_catalogue, np.maximum(positions, 0))
    self._catalogue_known = tf.constant(positions >= 0)

  def cache(self, student, examples: dict[str, np.ndarray], batch_size: int = 4096) -> bool:
    """Computes the teacher's embedding of each of `student`'s user and item
    indices once (module doc): users from `examples`, encoded training
    examples (one per user is read); items from the teacher's own catalogue,
    so an item feature the student does not read (e.g. a text-aware
    teacher's `content`) still places them; whether it did."""
    if HISTORY in self.model.encoder.user_inputs:
      return False  # its query changes with each example's history
    indices, first = np.unique(np.reshape(examples[USER_ID], [-1]), return_index=True)
    embeddings, known = [], []
    for start in range(0, len(first), batch_size):
      rows = first[start:start + batch_size]
      mapped, knows = self._mapped({name: tf.constant(np.asarray(values)[rows])
                                    for name, values in examples.items()})
      embeddings.append(self.model.query_tower(mapped, training=False))
      known.append(knows[:, 0])  # `_mapped`'s columns: user, item
    size = student.vocabulary.size(USER_ID)
    self.cached[USER_ID] = (
        tf.scatter_nd(indices[:, None], tf.concat(embeddings, 0), [size, embeddings[0].shape[1]]),
        tf.scatter_nd(indices[:, None], tf.concat(known, 0), [size]))
    self.cached[ITEM_ID] = self._items(student)
    return True

  def _items(self, student) -> tuple[tf.Tensor, tf.Tensor]:
    """The teacher's catalogue embedding of each student item index, and
    whether the teacher knows the item (its id, and in its catalogue)."""
    ids = [None, *student.vocabulary.item_ids]  # index 0: the unknown item
    positions = pd.Index(self.model.catalogue_item_ids).get_indexer(ids)
    known_ids = (self.vocabulary_map.index_maps[ITEM_ID].numpy() > 0
                 if self.vocabulary_map is not None else np.arange(len(ids)) > 0)
    embeddings = tf.gather(self._own_catalogue, np.maximum(positions, 0))
    return embeddings, tf.constant((positions >= 0) & known_ids)

  def catalogue_scores(self, features: dict[str, tf.Tensor],
                       taught: Optional[TaskInputs] = None) -> tuple[tf.Tensor, tf.Tensor]:
    """The teacher's retrieval scores (query . candidate) of every student
    catalogue item, [batch, items], and where it knows both user and item;
    `taught`, this batch's `task_inputs` if already computed, saves running
    the query tower again."""
    query, users = self._query(features, taught)
    scores = tf.matmul(query, self._catalogue, transpose_b=True)
    return scores, users[:, tf.newaxis] & self._catalogue_known[tf.newaxis, :]

  def pair_scores(self, features: dict[str, tf.Tensor], columns: tf.Tensor,
                  taught: Optional[TaskInputs] = None) -> tuple[tf.Tensor, tf.Tensor]:
    """As `catalogue_scores`, of catalogue `columns` only: each example's
    own ([batch, n]) or the same for all ([n]); [batch, n] each."""
    query, users = self._query(features, taught)
    candidates, known = (tf.gather(self._catalogue, columns),
                         tf.gather(self._catalogue_known, columns))
    if columns.shape.rank == 1:
      return (tf.matmul(query, candidates, transpose_b=True),
              users[:, tf.newaxis] & known[tf.newaxis, :])
    return tf.einsum("bd,bnd->bn", query, candidates), users[:, tf.newaxis] & known

  def user_scores(self, users: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`catalogue_scores` of student user indices [n], from the cache
    (`cache`); without it, a ValueError."""
    if USER_ID not in self.cached:
      raise ValueError("needs the teacher's embedding of each user, computed once before "
                       "training; a teacher whose query reads each example's history has none")
    return self.catalogue_scores({USER_ID: users})

  def _query(self, features, taught: Optional[TaskInputs]) -> tuple[tf.Tensor, tf.Tensor]:
    """The batch's teacher queries and whether the teacher knows each user."""
    if taught is not None:
      return taught.query, self._known_users(taught)
    if USER_ID in self.cached:
      return self._gathered(USER_ID, features)
    mapped, known = self._mapped(features)
    return tf.stop_gradient(self.model.query_tower(mapped)), known[:, 0]

  def task_inputs(self, features: dict[str, tf.Tensor]) -> Optional[TaskInputs]:
    """The teacher's embeddings and ranking logits of the batch; its
    `sample_weight` is 1 where the teacher knows the user and the item."""
    model = self.model
    if self.cached:
      (query, users), (candidate, items) = (self._gathered(side, features)
                                            for side in (USER_ID, ITEM_ID))
      known = tf.stack([users, items], axis=1)
    else:
      features, known = self._mapped(features)
      query = tf.stop_gradient(model.query_tower(features))
      candidate = tf.stop_gradient(model.candidate_tower(features))
    logits = {} if model.ranking is None else model.ranking(query, candidate)
    return TaskInputs(features, query, candidate,
                      {name: tf.stop_gradient(logit) for name, logit in logits.items()},
                      tf.cast(known[:, 0] & known[:, 1], tf.float32))

  def _gathered(self, side: str, features) -> tuple[tf.Tensor, tf.Tensor]:
    """The cached embeddings of the batch's `side` (user or item) and
    whether the teacher knows each."""
    embeddings, known = self.cached[side]
    indices = tf.reshape(features[side], [-1])
    return tf.gather(embeddings, indices), tf.gather(known, indices)

  def _known_users(self, taught: TaskInputs) -> tf.Tensor:
    """Whether the teacher knows each user of a batch it has read."""
    if USER_ID in self.cached:
      return tf.gather(self.cached[USER_ID][1], tf.reshape(taught.features[USER_ID], [-1]))
    return tf.reshape(taught.features[USER_ID], [-1]) > 0

  def _mapped(self, features):
    """The batch in the teacher's encoding, and [batch, 2] whether it knows
    each example's (user, item)."""
    if self.vocabulary_map is not None:
      features = self.vocabulary_map(features)
    known = tf.stack([tf.reshape(features[USER_ID], [-1]) > 0,
                      tf.reshape(features[ITEM_ID], [-1]) > 0], axis=1)
    return features, known


class VocabularyMap:
  """Re-encodes a student's encoded batch for a teacher whose vocabulary
  differs, by the raw strings: ids, tokens and history items the teacher
  knows get its indices, the others its unknown index 0; a bucket becomes
  the teacher's bucket of its middle value; vectors pass as they are; a
  feature only the teacher reads is missing.

  >>> from tfmtl.features import FeatureVocabulary
  >>> student = FeatureVocabulary(["u1", "u2"], ["a", "b"], [2, 1], {}, {}, {}, {})
  >>> teacher = FeatureVocabulary(["u2"], ["b", "c", "a"], [3, 2, 1], {}, {}, {}, {})
  >>> mapped = VocabularyMap(student, teacher)({"user_id": tf.constant([1, 2]),
  ...                                           "item_id": tf.constant([1, 2])})
  >>> mapped["user_id"].numpy().tolist(), mapped["item_id"].numpy().tolist()
  ([0, 1], [3, 1])
  """

  def __init__(self, student, teacher):
    self.student, self.teacher = student, teacher
    self.index_maps = {USER_ID: _index_map(student.user_ids, teacher.user_ids),
                       ITEM_ID: _index_map(student.item_ids, teacher.item_ids)}
    self.token_maps, self.missing = {}, {}
    theirs = {**teacher.user_features, **teacher.item_features}
    mine = {**student.user_features, **student.item_features}
    for name, spec in theirs.items():
      if name not in mine or mine[name].type != spec.type:
        self.missing[name] = spec
      elif spec.type == "categorical":
        self.index_maps[name] = _index_map(student.tokens[name], teacher.tokens[name])
      elif spec.type == "multi_categorical":
        columns = _index_map(student.tokens[name], teacher.tokens[name]).numpy()
        matrix = np.zeros((len(columns), len(teacher.tokens[name]) + 1), np.float32)
        matrix[np.arange(len(columns)), columns] = 1.0  # unknown tokens: its column 0
        self.token_maps[name] = tf.constant(matrix)
      elif spec.type == "bucketized":
        self.index_maps[name] = tf.constant(_bucket_map(student.boundaries[name],
                                                        teacher.boundaries[name]))
      elif spec.dim != mine[name].dim:
        raise ValueError(f"distillation.teacher: its vector feature {name!r} is {spec.dim} "
                         f"wide, the student's {mine[name].dim}")

  def __call__(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    mapped = dict(features)
    for name, index_map in self.index_maps.items():
      if name in features:
        mapped[name] = tf.gather(index_map, tf.cast(features[name], tf.int64))
    for name, matrix in self.token_maps.items():
      if name in features:
        mapped[name] = tf.minimum(tf.matmul(tf.cast(features[name], tf.float32), matrix), 1.0)
    if HISTORY in features:
      mapped[HISTORY] = tf.gather(self.index_maps[ITEM_ID], tf.cast(features[HISTORY], tf.int64))
    rows = tf.shape(features[USER_ID])[0]
    for name, spec in self.missing.items():
      mapped[name] = (tf.zeros([rows, spec.dim]) if spec.type == "vector" else
                      tf.zeros([rows, len(self.teacher.tokens[name]) + 1])
                      if spec.type == "multi_categorical" else tf.zeros([rows], tf.int64))
    return mapped


def _index_map(mine: list, theirs: list) -> tf.Tensor:
  """[len(mine) + 1] int64: each of my indices (0: unknown) -> theirs."""
  return tf.constant(np.concatenate(
      [[0], pd.Index(list(theirs)).get_indexer(list(mine)) + 1]).astype(np.int64))


def _bucket_map(mine: list[float], theirs: list[float]) -> np.ndarray:
  """Each of my buckets (0: missing, 1..n) -> their bucket of its middle."""
  cuts = np.asarray(mine, np.float64)
  edges = np.concatenate([[cuts[0] - 1.0], cuts, [cuts[-1] + 1.0]])
  middles = (edges[:-1] + edges[1:]) / 2
  return np.concatenate([[0], np.searchsorted(theirs, middles, side="right") + 1]).astype(
      np.int64)
