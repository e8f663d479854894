"""A trained tfmtl model as a teacher: `distillation.teacher: runs/<name>`, or
`Distillation(trained_model)` in Python (`tfmtl.distillation`)."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tfmtl.tasks import TaskInputs


class ModelTeacher:
  """Scores and per-task outputs of a trained `MultiTaskModel`, which must
  read the student's encoded features (the same vocabulary); it is never
  updated.

  Args:
    model: the teacher model.
  """

  def __init__(self, model):
    self.model = model
    self.tasks = model.tasks
    self._catalogue = tf.constant(model.catalogue_embeddings())  # [items, dim]

  def check_student(self, student) -> None:
    """ValueError unless the teacher reads the student's encoded features."""
    mine, theirs = student.vocabulary, self.model.vocabulary
    for field in ("user_ids", "item_ids", "tokens", "boundaries", "history_length"):
      if getattr(mine, field) != getattr(theirs, field):
        raise ValueError(f"distillation.teacher: its vocabulary ({field}) differs from the "
                         "student's; train teacher and student on the same data")

  def catalogue_scores(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
    """The teacher's retrieval scores (query . candidate) of every catalogue
    item, [batch, items]; the catalogue's embeddings are computed once."""
    query = self.model.query_tower(features)
    return tf.stop_gradient(tf.matmul(query, self._catalogue, transpose_b=True))

  def task_inputs(self, features: dict[str, tf.Tensor]) -> Optional[TaskInputs]:
    """The teacher's embeddings and ranking logits of the batch."""
    model = self.model
    query = tf.stop_gradient(model.query_tower(features))
    candidate = tf.stop_gradient(model.candidate_tower(features))
    logits = {} if model.ranking is None else model.ranking(query, candidate)
    return TaskInputs(features, query, candidate,
                      {name: tf.stop_gradient(logit) for name, logit in logits.items()})
