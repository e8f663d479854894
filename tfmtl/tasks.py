"""Tasks by type: each owns its loss and metrics, as TFRS tasks do.

`make_task(name, config)` returns a TFRS task whose loss is per example
(reduction NONE): the model averages it over the global batch, which is
right under every `tf.distribute` strategy.

- `retrieval`: `tfrs.tasks.Retrieval`, in-batch softmax with temperature,
  optional accidental-hit removal; the model passes item frequencies for the
  logQ sampling-bias correction.
- `regression`: predicts a label column; metrics `<name>_rmse`, `<name>_mae`.
- `binary`: predicts `label >= threshold` from a logit; metrics `<name>_auc`,
  `<name>_accuracy`.
- `implicit`: tells interactions (label 1) from sampled items (label 0);
  metric `<name>_auc`.
- `classification`: predicts a feature from a tower's embedding: softmax
  over a categorical feature's values (metric `<name>_accuracy`), or
  independent sigmoids over a multi-categorical feature's tokens (metric
  `<name>_auc` over all (example, token) pairs).
- `reconstruction`: decodes a token distribution (e.g. the user's genre
  preference) from the query embedding; cross-entropy, no metric.

Example:

>>> from tfmtl.config import TaskConfig
>>> from tfmtl.tasks import make_task
>>> task = make_task("rating", TaskConfig(type="regression", label="rating"))
>>> [m.name for m in task._ranking_metrics]
['rating_rmse', 'rating_mae']
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.config import ConfigError, FeatureConfig, TaskConfig
from tfmtl.precision import dtype_policy

_NONE = keras.losses.Reduction.NONE


def make_task(name: str, config: TaskConfig,
              label_feature: Optional[FeatureConfig] = None) -> tfrs.tasks.Task:
  """The TFRS task for one `TaskConfig` (see module doc), computing in
  float32 under any dtype policy (`tfmtl.precision`).

  `label_feature` is the encoding of a classification task's label.
  """
  with dtype_policy("float32"):
    return _make_task(name, config, label_feature)


def _make_task(name: str, config: TaskConfig,
               label_feature: Optional[FeatureConfig]) -> tfrs.tasks.Task:
  if config.type == "retrieval":
    return tfrs.tasks.Retrieval(
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction=_NONE),
        temperature=config.temperature,
        remove_accidental_hits=config.remove_accidental_hits, name=name)
  if config.type == "regression":
    return tfrs.tasks.Ranking(
        loss=keras.losses.MeanSquaredError(reduction=_NONE),
        metrics=[keras.metrics.RootMeanSquaredError(name=f"{name}_rmse"),
                 keras.metrics.MeanAbsoluteError(name=f"{name}_mae")], name=name)
  if config.type == "reconstruction":
    return tfrs.tasks.Ranking(
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction=_NONE),
        name=name)
  if config.type == "classification" and label_feature.type != "multi_categorical":
    return tfrs.tasks.Ranking(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=_NONE),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy")],
        name=name)
  metrics = [keras.metrics.AUC(from_logits=True, name=f"{name}_auc")]
  if config.type == "binary":
    metrics.append(keras.metrics.BinaryAccuracy(threshold=0.0, name=f"{name}_accuracy"))
  return tfrs.tasks.Ranking(
      loss=keras.losses.BinaryCrossentropy(from_logits=True, reduction=_NONE),
      metrics=metrics, name=name)


def tower_task_side(name: str, task: TaskConfig, user_features: dict[str, FeatureConfig],
                    item_features: dict[str, FeatureConfig]) -> tuple[str, str]:
  """(`query` | `candidate`, feature): the tower a classification or
  reconstruction task reads, and its label; `ConfigError` if the label is
  not a feature it can predict."""
  if task.type == "reconstruction":
    if getattr(item_features.get(task.label), "type", None) != "multi_categorical":
      raise ConfigError(f"tasks.{name}.label: {task.label!r} is not a multi_categorical item "
                        f"feature (item features: {sorted(item_features)})")
    return "query", task.label
  for side, features in (("query", user_features), ("candidate", item_features)):
    if task.label in features:
      if features[task.label].type == "vector":
        raise ConfigError(f"tasks.{name}.label: {task.label!r} is a vector feature, "
                          "which a classification task cannot predict")
      return side, task.label
  raise ConfigError(f"tasks.{name}.label: {task.label!r} is not a user or item feature "
                    f"(user features: {sorted(user_features)}, item features: "
                    f"{sorted(item_features)})")


def task_labels(config: TaskConfig, features: dict[str, tf.Tensor]) -> tf.Tensor:
  """A regression or binary task's labels, shaped [batch, 1]."""
  if config.label not in features:
    raise KeyError(f"task label column {config.label!r} is not in the features "
                   f"({sorted(features)})")
  labels = tf.cast(features[config.label], tf.float32)
  if config.type == "binary":
    labels = tf.cast(labels >= config.threshold, tf.float32)
  return tf.expand_dims(labels, -1)


def task_predictions(config: TaskConfig, logits: tf.Tensor) -> tf.Tensor:
  """A ranking task's predictions, [batch]: a probability for binary and
  implicit tasks."""
  predictions = tf.squeeze(logits, -1)
  return predictions if config.type == "regression" else tf.sigmoid(predictions)
