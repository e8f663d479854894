"""`implicit`: tells each interaction from items sampled from the catalogue.

For data without ratings: the ranking heads' logit of each (user, item)
interaction is a positive, those of `num_negatives` catalogue items drawn
uniformly for the same user are negatives; the loss is the binary
cross-entropy. The prediction is the probability of an interaction;
Keras metric `<task>_binned_auc` over positives and sampled negatives.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.data.schema import DOMAIN
from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import Task, TaskInputs
from tfmtl.tasks.binary import Binary
from tfmtl.tasks.regression import NONE


class Implicit(Task):
  """The implicit task (see module doc)."""

  type = "implicit"
  reads_pair = True
  needs_label = False
  prediction = staticmethod(Binary.prediction)

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, **kwargs)
    with dtype_policy("float32"):
      self.task = tfrs.tasks.Ranking(
          loss=keras.losses.BinaryCrossentropy(from_logits=True, reduction=NONE),
          metrics=[keras.metrics.AUC(from_logits=True, name=f"{name}_binned_auc")], name=name)

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    positive_logits = inputs.logits[self.name]
    negative_logits = model.sampled_item_logits(self.name, self.config.num_negatives,
                                                inputs.query, inputs.features.get(DOMAIN))
    return self.task(
        tf.concat([tf.ones_like(positive_logits), tf.zeros_like(negative_logits)], 1),
        tf.concat([positive_logits, negative_logits], 1), sample_weight=inputs.sample_weight,
        compute_metrics=inputs.compute_metrics)
