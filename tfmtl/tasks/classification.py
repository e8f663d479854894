"""`classification`: predicts a user or item feature from its tower.

A head on the tower's embedding predicts the feature named by `label`:
a softmax over a categorical or bucketized feature's values (Keras metric
`<task>_accuracy`), or independent sigmoids over a multi_categorical
feature's tokens (`<task>_binned_auc` over all (example, token) pairs).
The tower then no longer reads that feature, or it would copy it.

Its exact evaluation (`report`) is scikit-learn's classification report
over the distinct users (a user feature's task) or items (an item
feature's) of the evaluated rows: precision, recall, F1 and support per
value, their averages, and from them `<task>_micro_f1` (for one value per
row, the accuracy) and `<task>_macro_f1`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.data.schema import ITEM_ID, USER_ID
from tfmtl.errors import ConfigError
from tfmtl.layers import PredictionHead
from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import Task, TaskInputs
from tfmtl.tasks.regression import NONE


class TowerTask(Task):
  """A task with a head on one tower's embedding (`predicted_feature`),
  with as many outputs as the feature has values (`head`)."""

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, **kwargs)
    self.side, self.feature = self.predicted_feature(
        name, config, model.vocabulary.user_features, model.vocabulary.item_features)
    self.head = PredictionHead(config.layers, model.vocabulary.size(self.feature),
                               name=f"{name}_head")
    with tf.name_scope(f"{model.name}/"):  # its variables, named as the model's others
      self.head(tf.zeros([1, model.embedding_dim]))

  @classmethod
  def check_data(cls, name, config, user_features, item_features, label_columns, interactions):
    cls.predicted_feature(name, config, user_features, item_features)

  def tower_logits(self, inputs: TaskInputs) -> tf.Tensor:
    """The head's logits on the task's tower, [batch, values]."""
    return self.head(inputs.query if self.side == "query" else inputs.candidate)

  def evaluation_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
    """One of `rows` per distinct user (query side) or item (candidate side)."""
    return rows.drop_duplicates(USER_ID if self.side == "query" else ITEM_ID)


class Classification(TowerTask):
  """The classification task (see module doc)."""

  type = "classification"
  hides_feature = True  # or the tower would copy the feature into its embedding
  exact_metrics = ("micro_f1", "macro_f1")

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, model, **kwargs)
    features = {**model.vocabulary.user_features, **model.vocabulary.item_features}
    with dtype_policy("float32"):
      if features[self.feature].type == "multi_categorical":
        self.task = tfrs.tasks.Ranking(
            loss=keras.losses.BinaryCrossentropy(from_logits=True, reduction=NONE),
            metrics=[keras.metrics.AUC(from_logits=True, name=f"{name}_binned_auc")],
            name=name)
      else:
        self.task = tfrs.tasks.Ranking(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=NONE),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy")],
            name=name)

  @classmethod
  def predicted_feature(cls, name, config, user_features, item_features
                        ) -> Optional[tuple[str, str]]:
    for side, features in (("query", user_features), ("candidate", item_features)):
      if config.label in features:
        if features[config.label].type == "vector":
          raise ConfigError(f"tasks.{name}.label: {config.label!r} is a vector feature, "
                            "which a classification task cannot predict")
        return side, config.label
    raise ConfigError(f"tasks.{name}.label: {config.label!r} is not a user or item feature "
                      f"(user features: {sorted(user_features)}, item features: "
                      f"{sorted(item_features)})")

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    return self.task(inputs.features[self.feature], self.tower_logits(inputs),
                     sample_weight=inputs.sample_weight, compute_metrics=inputs.compute_metrics)

  @staticmethod
  def report(logits: np.ndarray, labels: np.ndarray, value_names: list[str]) -> dict:
    """scikit-learn's `classification_report` (as a dict) of the head's
    `logits` [rows, values] against the encoded `labels` (indices [rows], or
    multi-hot [rows, values]); `value_names`: each index's name
    (`FeatureVocabulary.value_names`). Index 0, the missing value, is never
    predicted, and rows missing a one-value label are left out."""
    import sklearn.metrics  # pylint: disable=import-outside-toplevel  (a second to import)
    if labels.ndim == 2:  # multi-label: a sigmoid per value
      truth, predicted = labels[:, 1:] > 0.5, logits[:, 1:] > 0
      names = value_names[1:]
      return sklearn.metrics.classification_report(
          truth, predicted, labels=range(len(names)), target_names=names, output_dict=True,
          zero_division=0)
    known = labels > 0
    if not known.any():
      return {}
    truth, predicted = labels[known], logits[known][:, 1:].argmax(axis=1) + 1
    shown = np.union1d(truth, predicted)
    return sklearn.metrics.classification_report(
        truth, predicted, labels=shown, target_names=[value_names[i] for i in shown],
        output_dict=True, zero_division=0)

  @staticmethod
  def summary(report: dict) -> dict[str, float]:
    """The report's `micro_f1` and `macro_f1` (NaN for an empty report)."""
    if not report:
      return {"micro_f1": float("nan"), "macro_f1": float("nan")}
    micro = report["accuracy"] if "accuracy" in report else report["micro avg"]["f1-score"]
    return {"micro_f1": float(micro), "macro_f1": float(report["macro avg"]["f1-score"])}
