"""Knowledge distillation: a small student model learns from a trained teacher.

The student trains on its usual hard-label losses plus, with `weight`, soft
losses toward the teacher on the same batch (Hinton et al. 2015):

- retrieval: the KL divergence from the teacher's softmax over the batch's
  candidates to the student's, both at `temperature` (scaled by its square);
- regression: the squared error to the teacher's prediction;
- binary: the KL divergence between the teacher's and the student's
  probabilities at `temperature` (scaled by its square).

Teacher and student read the same encoded batch, so they share a vocabulary
(train both on the same data); the student may be far smaller (narrower
embeddings, fewer or no experts). The teacher is never updated.

`initialize_student` also starts the student's id embeddings from the
teacher's: each id's teacher embedding on the first principal axes of all
of them, as many as the student's table (or mixed-dimension block) is wide.

Example (`teacher` a trained `MultiTaskModel`, `student` a new, smaller one):

    student.distillation = Distillation(teacher, weight=1.0, temperature=2.0)
    student.fit(train, epochs=15)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Distillation:
  """The teacher and how strongly the student follows it (see module doc)."""
  teacher: object
  weight: float = 1.0
  temperature: float = 2.0

  def check_student(self, student) -> None:
    """ValueError unless the teacher reads the student's encoded features."""
    mine, theirs = student.vocabulary, self.teacher.vocabulary
    for field in ("user_ids", "item_ids", "tokens", "boundaries", "history_length"):
      if getattr(mine, field) != getattr(theirs, field):
        raise ValueError(f"distillation.teacher: its vocabulary ({field}) differs from the "
                         "student's; train teacher and student on the same data")

  def initialize_student(self, student) -> None:
    """The student's user and item id tables <- the teacher's id embeddings
    projected on their principal axes (see module doc); the student's
    variables must exist."""
    if student.embedding_tables or self.teacher.embedding_tables:
      raise ValueError("distillation.initialize: pca reads and writes the towers' own id "
                       "tables; with model.tpu_embedding use initialize: none")
    for tower in ("query_tower", "candidate_tower"):
      theirs = getattr(self.teacher, tower).id_embedding
      taught = theirs(tf.range(theirs.input_dim)).numpy()  # [ids, width], any table kind
      mine = getattr(student, tower).id_embedding
      tables = getattr(mine, "tables", None) or [mine.embeddings]
      bounds = getattr(mine, "bounds", (0, len(taught)))
      for table, start, end in zip(tables, bounds, bounds[1:]):
        coordinates = principal_coordinates(taught, int(table.shape[1]))[start:end]
        width = coordinates.shape[1]
        table.assign(tf.concat([coordinates, table[:, width:]], axis=1))

  def loss(self, student, features: dict[str, tf.Tensor], query: tf.Tensor,
           candidate: tf.Tensor, logits: dict[str, tf.Tensor]) -> tf.Tensor:
    """The weighted soft loss for one batch (the student's embeddings and
    ranking logits given)."""
    teacher = self.teacher
    teacher_query = tf.stop_gradient(teacher.query_tower(features))
    teacher_candidate = tf.stop_gradient(teacher.candidate_tower(features))
    teacher_logits = ({} if teacher.ranking is None else
                      teacher.ranking(teacher_query, teacher_candidate))
    t = self.temperature
    terms = []
    for name, config in student.task_configs.items():
      if config.type == "retrieval" and name in teacher.task_configs:
        taught = tf.matmul(teacher_query, teacher_candidate, transpose_b=True) / (
            teacher.task_configs[name].temperature * t)
        learnt = tf.matmul(query, candidate, transpose_b=True) / (config.temperature * t)
        terms.append(t * t * tf.reduce_mean(tf.reduce_sum(
            tf.nn.softmax(taught) * (tf.nn.log_softmax(taught) - tf.nn.log_softmax(learnt)),
            axis=1)))
      elif config.type == "regression" and name in teacher_logits:
        terms.append(tf.reduce_mean(tf.square(logits[name] - tf.stop_gradient(
            teacher_logits[name]))))
      elif config.type == "binary" and name in teacher_logits:
        taught = tf.stop_gradient(teacher_logits[name]) / t
        soft_labels = tf.sigmoid(taught)
        terms.append(t * t * tf.reduce_mean(  # KL: cross-entropy less the teacher's entropy
            tf.nn.sigmoid_cross_entropy_with_logits(soft_labels, logits[name] / t)
            - tf.nn.sigmoid_cross_entropy_with_logits(soft_labels, taught)))
    return self.weight * tf.add_n(terms) if terms else tf.constant(0.0)


def principal_coordinates(rows: np.ndarray, width: int) -> np.ndarray:
  """`rows` (centred) on their first `width` principal axes, [rows, <= width]."""
  centred = rows - rows.mean(axis=0)
  u, singular_values, _ = np.linalg.svd(centred, full_matrices=False)
  return (u[:, :width] * singular_values[:width]).astype(np.float32)
