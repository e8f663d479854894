"""Task-loss weighting: how the tasks' losses add up to the training loss.

Every scheme multiplies each task's configured `weight` by a factor of its
own and reports the effective weights, which the model logs every epoch as
`<task>_weight`:

- `fixed`: the configured weights, unchanged.
- `uncertainty`: learned homoscedastic uncertainty (Kendall, Gal and Cipolla,
  2018). Each task has a trainable log-variance s; its term is
  `weight * (exp(-s) * loss + s)`, so a noisy task (high irreducible loss)
  learns a large s and a small effective weight `weight * exp(-s)`.
- `dwa`: dynamic weight averaging (Liu, Johns and Davison, 2019). After each
  epoch, a task whose loss fell slowly over the last two epochs gets more
  weight: `K * softmax(r / T)` with r = L(t-1) / L(t-2) per task. The
  factors start at 1 and are updated by a Keras callback that
  `MultiTaskModel.fit` adds by itself.

Example:

>>> import tensorflow as tf
>>> from tfmtl.weighting import make_weighting
>>> weighting = make_weighting("uncertainty", {"rating": 1.0, "like": 0.5})
>>> total, weights = weighting({"rating": tf.constant(2.0), "like": tf.constant(1.0)})
>>> float(total), {name: float(w) for name, w in weights.items()}
(2.5, {'rating': 1.0, 'like': 0.5})
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

class LossWeighting(keras.layers.Layer):
  """Fixed weights; the base of the adaptive schemes.

  Call it on `{task: scalar loss}`; it returns the total loss and
  `{task: effective weight}`.

  Args:
    task_weights: each task's configured weight.
  """

  def __init__(self, task_weights: dict[str, float], **kwargs):
    super().__init__(**kwargs)
    self.task_names = list(task_weights)
    self.task_weights = tf.constant([task_weights[name] for name in self.task_names],
                                    tf.float32)

  def factors(self) -> tf.Tensor:
    """Each task's multiplier of its configured weight, [num_tasks]."""
    return tf.ones([len(self.task_names)])

  def regularizer(self) -> tf.Tensor:
    """A term added to the total loss (the uncertainty penalty)."""
    return tf.constant(0.0)

  def callbacks(self) -> list[keras.callbacks.Callback]:
    """Callbacks `fit` needs to update the weights between epochs."""
    return []

  def call(self, losses: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    stacked = tf.stack([tf.cast(losses[name], tf.float32) for name in self.task_names])
    weights = self.task_weights * self.factors()
    # Per replica: the losses are its shares of the global means, and its
    # share of the regularizer is scaled the same way.
    total = (tf.reduce_sum(weights * stacked)
             + tf.nn.scale_regularization_loss(self.regularizer()))
    return total, dict(zip(self.task_names, tf.unstack(weights)))


class UncertaintyWeighting(LossWeighting):
  """Learned homoscedastic uncertainty weights (see module doc)."""

  def __init__(self, task_weights: dict[str, float], **kwargs):
    super().__init__(task_weights, **kwargs)
    self.log_variances = self.add_weight(
        name="log_variances", shape=[len(self.task_names)], initializer="zeros")

  def factors(self) -> tf.Tensor:
    return tf.exp(-self.log_variances)

  def regularizer(self) -> tf.Tensor:
    return tf.reduce_sum(self.task_weights * self.log_variances)


class DynamicWeightAveraging(LossWeighting):
  """Dynamic weight averaging (see module doc).

  Args:
    task_weights: each task's configured weight.
    temperature: T; larger is closer to equal factors.
  """

  def __init__(self, task_weights: dict[str, float], temperature: float = 2.0, **kwargs):
    super().__init__(task_weights, **kwargs)
    self.temperature = temperature
    self.dwa_factors = self.add_weight(
        name="dwa_factors", shape=[len(self.task_names)], initializer="ones",
        trainable=False)

  def factors(self) -> tf.Tensor:
    return self.dwa_factors

  def update(self, previous: np.ndarray, before_previous: np.ndarray) -> None:
    """Sets the factors from two epochs' mean losses, one per task."""
    ratios = np.asarray(previous) / np.maximum(np.asarray(before_previous), 1e-12)
    logits = ratios / self.temperature
    softmax = np.exp(logits - logits.max())
    self.dwa_factors.assign(len(ratios) * softmax / softmax.sum())

  def callbacks(self) -> list[keras.callbacks.Callback]:
    return [_DynamicWeightAveragingCallback(self)]


class _DynamicWeightAveragingCallback(keras.callbacks.Callback):
  """Feeds each epoch's `<task>_loss` logs to a `DynamicWeightAveraging`."""

  def __init__(self, weighting: DynamicWeightAveraging):
    super().__init__()
    self.weighting = weighting
    self.history: list[np.ndarray] = []

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self.history.append(np.array([logs[f"{name}_loss"] for name in
                                  self.weighting.task_names], dtype=np.float64))
    if len(self.history) >= 2:
      self.weighting.update(self.history[-1], self.history[-2])


SCHEMES = ("fixed", "uncertainty", "dwa")  # `model.loss_weighting.type`


def make_weighting(scheme: str, task_weights: dict[str, float],
                   temperature: float = 2.0) -> LossWeighting:
  """The weighting layer for a scheme name (`fixed`, `uncertainty`, `dwa`)."""
  if scheme == "fixed":
    return LossWeighting(task_weights, name="loss_weighting")
  if scheme == "uncertainty":
    return UncertaintyWeighting(task_weights, name="loss_weighting")
  if scheme == "dwa":
    return DynamicWeightAveraging(task_weights, temperature, name="loss_weighting")
  raise ValueError(f"unknown loss weighting {scheme!r}; expected one of {', '.join(SCHEMES)}")
