"""Teachers a student model distils from (`distillation.teacher`), one
module each:

- `model`: a trained tfmtl run (`ModelTeacher`): its scores over the whole
  catalogue and its per-task outputs for each pair, so every task of the
  student can follow the teacher's task of the same name;
- `ease`: the closed-form item-item model EASE (`EaseTeacher`, Steck 2019),
  fitted on the student's training split: scores over the catalogue only.

A teacher gives `catalogue_scores(features)`, [batch, items] in the student's
catalogue order (what the listwise term of `tfmtl.distillation` reads), and
`task_inputs(features)`, the per-pair outputs its tasks' terms read (None
when it has no tasks). Adding a teacher is one module with that class.
"""

from tfmtl.teachers.ease import EaseTeacher
from tfmtl.teachers.model import ModelTeacher

__all__ = ["EaseTeacher", "ModelTeacher"]
