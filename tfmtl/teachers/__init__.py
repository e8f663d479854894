"""Teachers a student model distils from (`distillation.teacher`), one
module each:

- `model`: a trained tfmtl run (`ModelTeacher`): its scores over the whole
  catalogue and its per-task outputs for each pair, so every task of the
  student can follow the teacher's task of the same name;
- `ease`: the closed-form item-item model EASE (`EaseTeacher`, Steck 2019),
  fitted on the student's training split: scores over the catalogue only.

A teacher gives `catalogue_scores(features, taught=None)`: its scores of the
batch's users over the student's catalogue, [batch, items], and where it
knows them (what the listwise terms of `tfmtl.distillation` read; `taught`
is the batch's `task_inputs` when already computed); `pair_scores(features,
columns, taught=None)`, the same for given catalogue columns only (each
example's own, [batch, n], or shared, [n]); `user_scores(users)`, the
scores of student user indices alone (a ValueError if it cannot score a
user without an example), from which `listwise_candidates` takes each
user's best items; `task_inputs(features)`,
the per-pair outputs its tasks' terms read, with `sample_weight` 1 where it
knows the example (None when it has no tasks); and `check_student(student)`,
called once before training, to adapt to the student's vocabulary and
catalogue; and `cache(student, examples)`, called once after it with the
encoded training examples, to compute ahead what it can (a run teacher: its
embedding of each user and item; whether it did). Adding a teacher is one
module with that class.
"""

from tfmtl.teachers.ease import EaseTeacher
from tfmtl.teachers.model import ModelTeacher

__all__ = ["EaseTeacher", "ModelTeacher"]
