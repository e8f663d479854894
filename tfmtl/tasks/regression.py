"""`regression`: predicts an interaction's label column (e.g. the rating).

The ranking heads' logit for the (query, candidate) pair is the
prediction; the loss is the squared error. Keras metrics and exact
evaluation metrics alike: `<task>_rmse`, `<task>_mae`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import Task, TaskInputs, check_label_column, known_mean, label_values

NONE = keras.losses.Reduction.NONE  # per example: the model averages over the global batch


class Regression(Task):
  """The regression task (see module doc)."""

  type = "regression"
  reads_pair = True
  exact_metrics = ("rmse", "mae")

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, **kwargs)
    with dtype_policy("float32"):
      self.task = tfrs.tasks.Ranking(
          loss=keras.losses.MeanSquaredError(reduction=NONE),
          metrics=[keras.metrics.RootMeanSquaredError(name=f"{name}_rmse"),
                   keras.metrics.MeanAbsoluteError(name=f"{name}_mae")], name=name)

  @classmethod
  def check_data(cls, name, config, user_features, item_features, label_columns, interactions):
    check_label_column(name, config, label_columns, interactions)

  def labels(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
    """The batch's labels, [batch, 1]."""
    return label_values(self.config, features)

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    return self.task(self.labels(inputs.features), inputs.logits[self.name],
                     sample_weight=inputs.sample_weight, compute_metrics=inputs.compute_metrics)

  def evaluate(self, predicted: np.ndarray, test: pd.DataFrame) -> dict[str, float]:
    error = predicted - test[self.config.label].to_numpy(np.float64)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}

  def distillation_loss(self, student: TaskInputs, teacher: TaskInputs, teacher_task: Task,
                        temperature: float) -> tf.Tensor:
    """The squared error to the teacher's prediction."""
    return known_mean(tf.square(student.logits[self.name]
                                - tf.stop_gradient(teacher.logits[self.name])), teacher)
