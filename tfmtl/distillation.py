"""Knowledge distillation: a small student model learns from a trained teacher.

The student trains on its usual hard-label losses plus, with `weight`, soft
losses toward the teacher on the same batch (Hinton et al. 2015), one per
task that the teacher has too, as the task's type defines it
(`Task.distillation_loss`):

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

from tfmtl.tasks import TaskInputs


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

  def loss(self, student, inputs: TaskInputs) -> tf.Tensor:
    """The weighted soft loss for one batch: the sum of each student task's
    distillation term toward the teacher's task of the same name and type
    (`Task.distillation_loss`)."""
    teacher = self.teacher
    query = tf.stop_gradient(teacher.query_tower(inputs.features))
    candidate = tf.stop_gradient(teacher.candidate_tower(inputs.features))
    logits = {} if teacher.ranking is None else teacher.ranking(query, candidate)
    taught = TaskInputs(inputs.features, query, candidate,
                        {name: tf.stop_gradient(logit) for name, logit in logits.items()})
    terms = []
    for name, task in student.tasks.items():
      teacher_task = teacher.tasks.get(name)
      if teacher_task is not None and teacher_task.type == task.type:
        term = task.distillation_loss(inputs, taught, teacher_task, self.temperature)
        if term is not None:
          terms.append(term)
    return self.weight * tf.add_n(terms) if terms else tf.constant(0.0)


def principal_coordinates(rows: np.ndarray, width: int) -> np.ndarray:
  """`rows` (centred) on their first `width` principal axes, [rows, <= width]."""
  centred = rows - rows.mean(axis=0)
  u, singular_values, _ = np.linalg.svd(centred, full_matrices=False)
  return (u[:, :width] * singular_values[:width]).astype(np.float32)
