"""Knowledge distillation: a student model learns from a teacher.

The student trains on its usual hard-label losses plus soft losses toward a
teacher (`tfmtl.teachers`: a trained tfmtl run, or the closed-form EASE):

- with `weight`, one term per task that the teacher has too, as the task's
  type defines it (`Task.distillation_loss`; Hinton et al. 2015):
  retrieval, the KL divergence from the teacher's softmax over the batch's
  candidates to the student's; regression, the squared error to the
  teacher's prediction; binary, the KL divergence between the two
  probabilities; all at `temperature`;
- the listwise terms, over the items each example's user has not
  interacted with in training (the ranking evaluation measures), with the
  teacher's scores and the student's query . candidate dot products both
  divided by `listwise_temperature`:
  - `listwise_weight`: the KL divergence from the teacher's softmax over
    those items to the student's;
  - `topk_weight`: ranking distillation (Tang & Wang 2018): the teacher's
    `topk` best items as extra positives of the student's softmax, the
    item at rank r weighted exp(-r / `topk_decay`);
  - `margin_weight`: score-difference matching (Margin-MSE, Hofstätter et
    al. 2020) over every pair of those items: the mean squared difference
    between the student's and the teacher's score margins, which ignores
    an offset between their scales.

  By default they score the whole catalogue at each step. With
  `listwise_candidates` N (`ListwiseCandidates`), each example scores only
  the teacher's N best unseen items for its user, found once before
  training, and the batch's other unseen items: the student's candidate
  tower then runs on those items alone, and the training interactions are
  kept as sorted (user, item) keys rather than a users x items mask.

The student may be far smaller (narrower embeddings, fewer or no experts).
A run teacher whose vocabulary differs reads the batch mapped by raw ids and
tokens, and what it does not know gets no term (`tfmtl.teachers.model`).
The teacher is never updated.

`initialize_student` also starts the student's id embeddings from a model
teacher's: each id's teacher embedding on the first principal axes of all
of them, as many as the student's table (or mixed-dimension block) is wide.

Example (`teacher` a trained `MultiTaskModel`, `student` a new, smaller one):

    student.distillation = Distillation(teacher, weight=1.0, temperature=2.0)
    student.fit(train, epochs=15)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl.data.schema import ITEM_ID, USER_ID
from tfmtl.errors import ConfigError
from tfmtl.tasks import TaskInputs
from tfmtl.tasks.base import hide, masked_kl
from tfmtl.teachers import EaseTeacher, ModelTeacher
from tfmtl.teachers.ease import interaction_matrix, training_pairs
from tfmtl.top_k import EXCLUDED_SCORE, top_k


@dataclasses.dataclass
class Distillation:
  """The teacher and how strongly the student follows it (see module doc).

  Attributes:
    teacher: a `tfmtl.teachers` teacher, or a `MultiTaskModel` (taken as a
      `ModelTeacher`).
    weight, temperature: the per-task terms' weight and temperature.
    listwise_weight, topk_weight, topk, topk_decay, margin_weight,
      listwise_temperature: the listwise terms'.
    seen: [user indices, items], true where a user interacted with an item
      in training; needed by the listwise terms over the whole catalogue.
    candidates: a `ListwiseCandidates`: the listwise terms score those
      instead of the whole catalogue (then `seen` is not needed).
  """
  teacher: Any
  weight: float = 1.0
  temperature: float = 2.0
  listwise_weight: float = 0.0
  listwise_temperature: float = 0.05
  seen: Optional[tf.Tensor] = None
  topk_weight: float = 0.0
  topk: int = 10
  topk_decay: float = 5.0
  margin_weight: float = 0.0
  candidates: Optional["ListwiseCandidates"] = None

  def __post_init__(self):
    if not hasattr(self.teacher, "catalogue_scores"):
      self.teacher = ModelTeacher(self.teacher)
    if self.listwise and self.seen is None and self.candidates is None:
      raise ValueError("the listwise terms need `seen`, the training interactions")

  @property
  def listwise(self) -> bool:
    """Whether any listwise term is on."""
    return bool(self.listwise_weight or self.topk_weight or self.margin_weight)

  @classmethod
  def from_config(cls, options, student, train: pd.DataFrame, load_run,
                  examples: Optional[dict[str, np.ndarray]] = None) -> "Distillation":
    """The distillation `options` (`config.distillation`) name for `student`,
    trained on `train`; `load_run(path)` loads a run's model. With
    `examples` (the encoded training examples), a run teacher computes what
    it says of each user and item once (`ModelTeacher.cache`)."""
    if options.teacher == "ease":
      teacher = EaseTeacher.fit(student, train, options.ease_lambda)
    else:
      teacher = ModelTeacher(load_run(options.teacher))
    teacher.check_student(student)
    weights = {"listwise_weight": options.listwise_weight,
               "topk_weight": options.topk_weight, "margin_weight": options.margin_weight}
    if examples is not None and (options.weight or any(weights.values())):
      teacher.cache(student, examples)
    seen = candidates = None
    if any(weights.values()):
      if not any(task.type == "retrieval" for task in student.tasks.values()):
        on = ", ".join(key for key, weight in weights.items() if weight)
        raise ConfigError(f"distillation.{on}: the listwise terms train the retrieval "
                          "scores; add a retrieval task or set them to 0")
      if options.listwise_candidates:
        try:
          candidates = ListwiseCandidates.find(teacher, student, train,
                                               options.listwise_candidates)
        except ValueError as error:
          raise ConfigError(f"distillation.listwise_candidates: {error}") from None
      else:
        seen = tf.constant(interaction_matrix(student, train) > 0)
    return cls(teacher, options.weight, options.temperature,
               listwise_temperature=options.listwise_temperature, seen=seen,
               topk=options.topk, topk_decay=options.topk_decay, candidates=candidates,
               **weights)

  def check_student(self, student) -> None:
    """Adapts the teacher to `student` (see `tfmtl.teachers`)."""
    self.teacher.check_student(student)

  def initialize_student(self, student) -> None:
    """The student's user and item id tables <- the teacher's id embeddings
    projected on their principal axes (see module doc); the student's
    variables must exist."""
    teacher = getattr(self.teacher, "model", None)
    if teacher is None:
      raise ConfigError("distillation.initialize: pca starts the student from a model "
                        "teacher's embeddings; this teacher has none (use initialize: none)")
    if student.embedding_tables or teacher.embedding_tables:
      raise ValueError("distillation.initialize: pca reads and writes the towers' own id "
                       "tables; with model.tpu_embedding use initialize: none")
    for tower in ("query_tower", "candidate_tower"):
      theirs = getattr(teacher, tower).id_embedding
      taught = theirs(tf.range(theirs.input_dim)).numpy()  # [ids, width], any table kind
      mine = getattr(student, tower).id_embedding
      tables = getattr(mine, "tables", None) or [mine.embeddings]
      bounds = getattr(mine, "bounds", (0, len(taught)))
      for table, start, end in zip(tables, bounds, bounds[1:]):
        coordinates = principal_coordinates(taught, int(table.shape[1]))[start:end]
        width = coordinates.shape[1]
        table.assign(tf.concat([coordinates, table[:, width:]], axis=1))

  def loss(self, student, inputs: TaskInputs) -> tf.Tensor:
    """The weighted soft loss for one batch: each student task's
    distillation term toward the teacher's task of the same name and type
    (`Task.distillation_loss`), plus the listwise terms."""
    terms = []
    taught = self.teacher.task_inputs(inputs.features) if self.weight else None
    for name, task in student.tasks.items() if taught is not None else ():
      teacher_task = self.teacher.tasks.get(name)
      if teacher_task is not None and teacher_task.type == task.type:
        term = task.distillation_loss(inputs, taught, teacher_task, self.temperature)
        if term is not None:
          terms.append(self.weight * term)
    if self.listwise:
      terms.append(self.listwise_loss(student, inputs, taught))
    return tf.add_n(terms) if terms else tf.constant(0.0)

  def listwise_loss(self, student, inputs: TaskInputs,
                    taught_inputs: Optional[TaskInputs] = None) -> tf.Tensor:
    """The batch's weighted listwise terms over each user's unseen catalogue
    items (see module doc); `taught_inputs`: the teacher's `task_inputs` of
    the batch, if computed."""
    if self.candidates is not None:
      taught, learnt, hidden = self.candidates.scores(self.teacher, student, inputs,
                                                      taught_inputs)
    else:
      seen = tf.gather(self.seen, tf.reshape(inputs.features[USER_ID], [-1]))
      taught, known = self.teacher.catalogue_scores(inputs.features, taught_inputs)
      learnt = tf.matmul(inputs.query, student.catalogue_embeddings(), transpose_b=True)
      hidden = seen | ~known
    taught = taught / self.listwise_temperature
    learnt = tf.cast(learnt, tf.float32) / self.listwise_temperature
    terms = []
    if self.listwise_weight:
      terms.append(self.listwise_weight * masked_kl(taught, learnt, hidden))
    if self.topk_weight:
      terms.append(self.topk_weight * top_k_cross_entropy(taught, learnt, hidden, self.topk,
                                                          self.topk_decay))
    if self.margin_weight:
      terms.append(self.margin_weight * margin_mse(taught, learnt, hidden))
    return tf.reduce_mean(tf.add_n(terms))


class ListwiseCandidates:
  """The items the listwise terms score when the catalogue is too large to
  score whole at each step (module doc): per student user index, the
  teacher's `n` best items that user did not interact with in training,
  plus the batch's other items.

  Args:
    best: [user indices, n] int32 catalogue columns, in column order
      (sorted once here, searched at each step).
    best_seen: [user indices, n] bool, true where `best` had to take a
      seen item (the user has fewer than n unseen).
    seen_keys: int64 `user index * items + column` of the training
      interactions, `items` the catalogue's size.
    item_columns: [item vocabulary size] int32, each encoded item's
      catalogue column (-1: not in the catalogue, and the unknown item).
  """

  def __init__(self, best, best_seen, seen_keys, item_columns, items: int):
    self.best = tf.constant(best, tf.int32)
    self.best_seen = tf.constant(best_seen, tf.bool)
    self.items = items
    self.seen_keys = tf.constant(np.union1d([-1], seen_keys), tf.int64)  # never empty
    self.item_columns = tf.constant(item_columns, tf.int32)

  @classmethod
  def find(cls, teacher, student, train: pd.DataFrame, n: int,
           cells_per_step: int = 1 << 24) -> "ListwiseCandidates":
    """The teacher's `n` best unseen items of each of `student`'s users in
    `train`, scored in blocks of users of about `cells_per_step` scores;
    a ValueError if the teacher cannot score users on their own."""
    items = len(student.catalogue_item_ids)
    users, columns = training_pairs(student, train)
    item_columns = np.full(student.vocabulary.size(ITEM_ID), -1, np.int32)
    item_columns[tf.reshape(student.catalogue_features[ITEM_ID], [-1]).numpy()] = np.arange(items)
    item_columns[0] = -1  # the unknown item's index: no one catalogue item
    n, block = min(n, items), max(1, cells_per_step // items)
    best, best_seen = [], []
    for start in range(0, student.vocabulary.size(USER_ID), block):
      rows = tf.range(start, min(start + block, student.vocabulary.size(USER_ID)))
      scores, _ = teacher.user_scores(rows)
      mine = (users >= start) & (users < start + block)
      values, top = top_k(scores, n, np.stack([users[mine] - start, columns[mine]], 1))
      best.append(top.numpy())
      best_seen.append(values.numpy() == EXCLUDED_SCORE)  # users with fewer than n unseen items
    best, best_seen = np.concatenate(best), np.concatenate(best_seen)
    order = np.argsort(best, axis=1)
    return cls(np.take_along_axis(best, order, 1), np.take_along_axis(best_seen, order, 1),
               users.astype(np.int64) * items + columns, item_columns, items)

  def scores(self, teacher, student, inputs: TaskInputs, taught_inputs=None
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(teacher scores, student scores, hidden), [batch, n + batch items]
    each: every example's `best` items, then the batch's distinct items;
    hidden where seen in training, unknown to the teacher, or already
    among the example's `best`."""
    users = tf.reshape(inputs.features[USER_ID], [-1])
    best = tf.gather(self.best, users)  # [batch, n]
    batch_items = tf.unique(tf.gather(self.item_columns,
                                      tf.reshape(inputs.features[ITEM_ID], [-1])))[0]
    batch_items = tf.boolean_mask(batch_items, batch_items >= 0)  # [m]
    in_batch = tf.broadcast_to(batch_items[tf.newaxis, :],
                               [tf.shape(best)[0], tf.shape(batch_items)[0]])
    position = tf.minimum(tf.searchsorted(best, in_batch), tf.shape(best)[1] - 1)
    repeated = tf.gather(best, position, batch_dims=1) == in_batch
    keys = tf.cast(users, tf.int64)[:, tf.newaxis] * self.items + tf.cast(in_batch, tf.int64)
    found = tf.minimum(tf.searchsorted(self.seen_keys, tf.reshape(keys, [-1])),
                       tf.size(self.seen_keys) - 1)
    seen = tf.reshape(tf.gather(self.seen_keys, found), tf.shape(keys)) == keys
    # The student's candidate tower runs once per distinct item.
    distinct, slots = tf.unique(tf.concat([tf.reshape(best, [-1]), batch_items], 0))
    embeddings = student.candidate_tower({name: tf.gather(values, distinct) for name, values
                                          in student.catalogue_features.items()})
    best_slots, batch_slots = tf.split(slots, [tf.size(best), tf.size(batch_items)])
    query = tf.cast(inputs.query, embeddings.dtype)
    learnt = tf.concat([
        tf.einsum("bd,bnd->bn", query, tf.gather(embeddings, tf.reshape(best_slots,
                                                                        tf.shape(best)))),
        tf.matmul(query, tf.gather(embeddings, batch_slots), transpose_b=True)], axis=1)
    taught, known = (tf.concat(pair, axis=1) for pair in zip(
        teacher.pair_scores(inputs.features, best, taught_inputs),
        teacher.pair_scores(inputs.features, batch_items, taught_inputs)))
    hidden = ~known | tf.concat([tf.gather(self.best_seen, users), seen | repeated], axis=1)
    return taught, learnt, hidden


def top_k_cross_entropy(teacher_scores: tf.Tensor, student_logits: tf.Tensor,
                        hidden: tf.Tensor, k: int, decay: float) -> tf.Tensor:
  """Per row, the cross-entropy of the student's softmax over the columns
  not `hidden` at the teacher's `k` best such columns, the one at rank r
  (from 0) weighted exp(-r / decay), weights summing to 1; [rows].

  >>> float(top_k_cross_entropy(tf.constant([[3., 1., 2.]]), tf.constant([[0., 0., 0.]]),
  ...                           tf.constant([[False, False, True]]), k=1, decay=1.0)[0])
  0.693...
  """
  k = min(k, int(teacher_scores.shape[-1]))
  _, best = top_k(hide(teacher_scores, hidden), k)  # [rows, k]
  weights = tf.exp(-tf.range(k, dtype=tf.float32) / decay)
  weights = weights / tf.reduce_sum(weights)
  log_probabilities = tf.nn.log_softmax(hide(student_logits, hidden))
  usable = tf.cast(~tf.gather(hidden, best, batch_dims=1), tf.float32)  # fewer than k unseen
  return -tf.reduce_sum(weights * usable * tf.gather(log_probabilities, best, batch_dims=1),
                        axis=1)


def margin_mse(teacher_scores: tf.Tensor, student_scores: tf.Tensor,
               hidden: tf.Tensor) -> tf.Tensor:
  """Per row, the mean over every ordered pair (j, k) of columns not
  `hidden` of ((s_j - s_k) - (t_j - t_k))^2: twice the variance of s - t
  over those columns; [rows].

  >>> float(margin_mse(tf.constant([[1., 2., 3.]]), tf.constant([[11., 12., 0.]]),
  ...                  tf.constant([[False, False, True]]))[0])
  0.0
  """
  shown = tf.cast(~hidden, tf.float32)
  count = tf.maximum(tf.reduce_sum(shown, axis=1, keepdims=True), 1.0)
  difference = (student_scores - teacher_scores) * shown
  centred = (difference - tf.reduce_sum(difference, axis=1, keepdims=True) / count) * shown
  return 2.0 * tf.reduce_sum(tf.square(centred), axis=1) / tf.squeeze(count, 1)


def principal_coordinates(rows: np.ndarray, width: int) -> np.ndarray:
  """`rows` (centred) on their first `width` principal axes, [rows, <= width]."""
  centred = rows - rows.mean(axis=0)
  u, singular_values, _ = np.linalg.svd(centred, full_matrices=False)
  return (u[:, :width] * singular_values[:width]).astype(np.float32)
