"""`binary`: predicts `label >= threshold` (e.g. a like: rating >= 4).

The ranking heads' logit for the pair is the log-odds; the prediction is
its probability; the loss is the binary cross-entropy. Keras metrics:
`<task>_binned_auc` (Keras's AUC, over 200 thresholds) and
`<task>_accuracy`; the exact evaluation gives `<task>_auc` (ranks, ties
averaged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.errors import ConfigError
from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import Task, TaskInputs, check_label_column, known_mean, label_values
from tfmtl.tasks.regression import NONE


class Binary(Task):
  """The binary task (see module doc)."""

  type = "binary"
  reads_pair = True
  exact_metrics = ("auc",)

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, **kwargs)
    with dtype_policy("float32"):
      self.task = tfrs.tasks.Ranking(
          loss=keras.losses.BinaryCrossentropy(from_logits=True, reduction=NONE),
          metrics=[keras.metrics.AUC(from_logits=True, name=f"{name}_binned_auc"),
                   keras.metrics.BinaryAccuracy(threshold=0.0, name=f"{name}_accuracy")],
          name=name)

  @classmethod
  def check_config(cls, config) -> None:
    super().check_config(config)
    if config.threshold is None:
      raise ConfigError("threshold: a binary task needs a threshold")

  @classmethod
  def check_data(cls, name, config, user_features, item_features, label_columns, interactions):
    check_label_column(name, config, label_columns, interactions)

  def labels(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
    """1 where the label reaches the threshold, else 0, [batch, 1]."""
    return tf.cast(label_values(self.config, features) >= self.config.threshold, tf.float32)

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    return self.task(self.labels(inputs.features), inputs.logits[self.name],
                     sample_weight=inputs.sample_weight, compute_metrics=inputs.compute_metrics)

  @staticmethod
  def prediction(logits: tf.Tensor) -> tf.Tensor:
    return tf.sigmoid(tf.squeeze(logits, -1))

  def evaluate(self, predicted: np.ndarray, test: pd.DataFrame) -> dict[str, float]:
    labels = test[self.config.label].to_numpy(np.float64) >= self.config.threshold
    return {"auc": exact_auc(labels, predicted)}

  def distillation_loss(self, student: TaskInputs, teacher: TaskInputs, teacher_task: Task,
                        temperature: float) -> tf.Tensor:
    """The KL divergence between the teacher's and the student's
    probabilities at `temperature`, scaled by its square."""
    t = temperature
    taught = tf.stop_gradient(teacher.logits[self.name]) / t
    soft_labels = tf.sigmoid(taught)
    return t * t * known_mean(  # cross-entropy less the teacher's entropy
        tf.nn.sigmoid_cross_entropy_with_logits(soft_labels, student.logits[self.name] / t)
        - tf.nn.sigmoid_cross_entropy_with_logits(soft_labels, taught), teacher)


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without
  both classes.

  >>> import numpy as np
  >>> exact_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
  0.75
  """
  import sklearn.metrics  # pylint: disable=import-outside-toplevel  (a second to import)
  labels = np.asarray(labels, bool)
  if labels.all() or not labels.any():
    return float("nan")
  return float(sklearn.metrics.roc_auc_score(labels, scores))
