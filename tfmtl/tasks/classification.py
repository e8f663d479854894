"""`classification`: predicts a user or item feature from its tower.

A head on the tower's embedding predicts the feature named by `label`:
a softmax over a categorical or bucketized feature's values (Keras metric
`<task>_accuracy`), or independent sigmoids over a multi_categorical
feature's tokens (`<task>_binned_auc` over all (example, token) pairs).
The tower then no longer reads that feature, or it would copy it.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

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


class Classification(TowerTask):
  """The classification task (see module doc)."""

  type = "classification"
  hides_feature = True  # or the tower would copy the feature into its embedding

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
