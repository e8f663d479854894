"""`reconstruction`: an autoencoder through the query embedding.

A head on the query embedding decodes the user's preference over a
multi_categorical item feature (e.g. genres): each token's share among the
tokens of the items in the user's `history`. The loss is the cross-entropy
to that profile; there is no metric. With the sequence tower on, the
history is also the query tower's input.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.data.schema import HISTORY, ITEM_ID
from tfmtl.errors import ConfigError
from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import TaskInputs
from tfmtl.tasks.classification import TowerTask
from tfmtl.tasks.regression import NONE


class Reconstruction(TowerTask):
  """The reconstruction task (see module doc)."""

  type = "reconstruction"
  reads_history = True

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, model, **kwargs)
    with dtype_policy("float32"):
      self.task = tfrs.tasks.Ranking(
          loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction=NONE),
          name=name)
    catalogue = model.catalogue_features
    self.item_tokens = tf.constant(_by_item_index(  # item index -> the feature's multi-hot
        catalogue[ITEM_ID].numpy(), catalogue[self.feature].numpy(),
        model.vocabulary.size(ITEM_ID)))

  @classmethod
  def predicted_feature(cls, name, config, user_features, item_features):
    if getattr(item_features.get(config.label), "type", None) != "multi_categorical":
      raise ConfigError(f"tasks.{name}.label: {config.label!r} is not a multi_categorical item "
                        f"feature (item features: {sorted(item_features)})")
    return "query", config.label

  def history_profile(self, history: tf.Tensor) -> tf.Tensor:
    """Each token's share among the history items' tokens, [batch, tokens]."""
    counts = tf.reduce_sum(tf.gather(self.item_tokens, history), axis=1)  # padding rows: 0
    return counts / tf.maximum(tf.reduce_sum(counts, axis=-1, keepdims=True), 1.0)

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    return self.task(self.history_profile(inputs.features[HISTORY]), self.tower_logits(inputs),
                     sample_weight=inputs.sample_weight, compute_metrics=inputs.compute_metrics)


def _by_item_index(item_indices: np.ndarray, values: np.ndarray, num_items: int) -> np.ndarray:
  """Catalogue rows' `values` placed at their item index; OOV row 0 stays zero."""
  table = np.zeros([num_items, *values.shape[1:]], np.float32)
  known = item_indices > 0
  table[item_indices[known]] = values[known]
  return table
