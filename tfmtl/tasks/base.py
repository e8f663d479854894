"""`Task`: what one task type knows, in one class.

A task type's class says everything about its tasks that the rest of
tfmtl asks: the config rules (`check_config`), whether the data can feed
it (`check_data`), which embeddings it reads (`reads_pair`: the ranking
heads' logit for a (query, candidate) pair; `predicted_feature`: a tower's
embedding), its loss and Keras metrics (`compute_loss`, through a TFRS
task built in `__init__`), its prediction (`prediction`: the model's and
the export's output), its exact evaluation metrics (`evaluate`; a
classification task's `report`) and its
distillation term (`distillation_loss`).

A task is a Keras layer, so the model tracks its head and metrics; it is
never called itself. Its code runs in the model's train and test steps,
which autograph does not convert (`MultiTaskModel.train_step`): branch on
a tensor's value with TensorFlow ops (`tf.where`, `tf.cond`), as TFRS's
tasks do, not with a Python `if`. `tfmtl.tasks.make_task` builds one
from its config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.errors import ConfigError

if TYPE_CHECKING:
  from tfmtl.config import FeatureConfig, TaskConfig


@dataclasses.dataclass(frozen=True)
class TaskInputs:
  """What a task's loss reads from one batch of a model.

  Attributes:
    features: the encoded batch.
    query, candidate: the towers' embeddings, [batch, dim].
    logits: the ranking heads' logit per pair-reading task, [batch, 1].
    sample_weight: each example's weight, or None.
    compute_metrics: whether to update the Keras metrics.
  """
  features: dict[str, tf.Tensor]
  query: tf.Tensor
  candidate: tf.Tensor
  logits: dict[str, tf.Tensor]
  sample_weight: Optional[tf.Tensor] = None
  compute_metrics: bool = True


class Task(keras.layers.Layer):
  """One task of a `MultiTaskModel` (see module doc).

  Subclasses set `type` (the config's `type`) and the traits below, build
  their TFRS task in `__init__(name, config, model)` (`model`: the model
  being built, with its `vocabulary`, `encoder` and `catalogue_features`)
  and implement `compute_loss`.
  """

  type: ClassVar[str] = ""
  reads_pair: ClassVar[bool] = False  # a ranking head scores (query, candidate)
  reads_history: ClassVar[bool] = False  # needs the `history` feature
  needs_label: ClassVar[bool] = True  # the config names a label
  hides_feature: ClassVar[bool] = False  # its tower stops reading the feature it predicts
  exact_metrics: ClassVar[tuple[str, ...]] = ()  # `evaluate`'s, each `<task>_<metric>`

  def __init__(self, name: str, config: TaskConfig, **kwargs):
    super().__init__(name=name, **kwargs)
    self.config = config

  @classmethod
  def check_config(cls, config: TaskConfig) -> None:
    """`ConfigError` (naming the field) if `config` breaks this type's rules."""
    if cls.needs_label and not config.label:
      raise ConfigError(f"label: a {cls.type} task needs a label column")

  @classmethod
  def check_data(cls, name: str, config: TaskConfig, user_features: dict[str, FeatureConfig],
                 item_features: dict[str, FeatureConfig], label_columns: list[str],
                 interactions: str) -> None:
    """`ConfigError` if the data cannot feed the task (`interactions`: the
    interaction file's name, for messages)."""

  @classmethod
  def predicted_feature(cls, name: str, config: TaskConfig,
                        user_features: dict[str, FeatureConfig],
                        item_features: dict[str, FeatureConfig]) -> Optional[tuple[str, str]]:
    """(`query` | `candidate`, feature) of a task that reads one tower's
    embedding; None for the others."""
    return None

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    """The loss of each example of the batch, [batch] (`model`: the task's)."""
    raise NotImplementedError

  @staticmethod
  def prediction(logits: tf.Tensor) -> tf.Tensor:
    """A pair-reading task's prediction from its logits [batch, 1] -> [batch]."""
    return tf.squeeze(logits, -1)

  def evaluate(self, predicted: np.ndarray, test: pd.DataFrame) -> dict[str, float]:
    """The exact metrics (`exact_metrics`) of `predicted` for `test`'s rows."""
    return {}

  def distillation_loss(self, student: TaskInputs, teacher: TaskInputs, teacher_task: "Task",
                        temperature: float) -> Optional[tf.Tensor]:
    """The soft loss toward a teacher's task of the same name and type (a
    scalar, counting only the examples the teacher knows: `known_mean`), or
    None for a type without one."""
    return None


# A hidden column's logit: finite (a -inf would make NaN gradients through
# tf.where), and far below any real one, so its softmax share is 0.
HIDDEN_LOGIT = -1e9


def hide(logits: tf.Tensor, hidden: tf.Tensor) -> tf.Tensor:
  """`logits` with the `hidden` columns set to `HIDDEN_LOGIT`."""
  return tf.where(hidden, tf.constant(HIDDEN_LOGIT, logits.dtype), logits)


def masked_kl(teacher_logits: tf.Tensor, student_logits: tf.Tensor,
              hidden: tf.Tensor) -> tf.Tensor:
  """Per row, KL(softmax(teacher) || softmax(student)) over the columns not
  `hidden`, [rows] (0 for a row with every column hidden).

  >>> float(masked_kl(tf.constant([[1., 2., 9.]]), tf.constant([[1., 2., 0.]]),
  ...                 tf.constant([[False, False, True]]))[0])
  0.0
  """
  teacher = tf.nn.log_softmax(hide(teacher_logits, hidden))
  student = tf.nn.log_softmax(hide(student_logits, hidden))
  return tf.reduce_sum(tf.where(hidden, 0.0, tf.exp(teacher) * (teacher - student)), axis=1)


def known_mean(values: tf.Tensor, teacher: TaskInputs) -> tf.Tensor:
  """The batch mean of per-example `values`, those the teacher does not know
  (`teacher.sample_weight` 0) counting 0."""
  values = tf.reshape(values, [-1])
  if teacher.sample_weight is None:
    return tf.reduce_mean(values)
  return tf.reduce_mean(values * tf.reshape(teacher.sample_weight, [-1]))


def label_values(config: TaskConfig, features: dict[str, tf.Tensor]) -> tf.Tensor:
  """The label column of a batch as float32 [batch, 1]; a KeyError names it."""
  if config.label not in features:
    raise KeyError(f"task label column {config.label!r} is not in the features "
                   f"({sorted(features)})")
  return tf.expand_dims(tf.cast(features[config.label], tf.float32), -1)


def check_label_column(name: str, config: TaskConfig, label_columns: list[str],
                       interactions: str) -> None:
  """`ConfigError` unless the task's label is a numeric interaction column."""
  if config.label not in label_columns:
    raise ConfigError(f"tasks.{name}.label: column {config.label!r} is not in {interactions} "
                      f"(numeric columns: {label_columns}; a column with a value that is not "
                      "a finite number is not one, and a warning names its first such row)")
