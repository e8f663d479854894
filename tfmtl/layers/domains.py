"""Multi-domain layers: one model, shared towers, a part of its own per domain.

With `data.domain_column`, every interaction has a domain (a product line,
a site, a user segment), encoded as an index: 1..D for the training
domains, 0 for one the model never saw. What each domain owns
(`model.multitask.per_domain`):

- `tfmtl.layers.heads.DomainHeads`: a ranking task's head, one per domain
  (`heads`), optionally added to a head all domains share (`shared_heads`);
- `DomainGate`: an MMoE or PLE gate over the experts, one per domain
  (`gates`; without domains it is the plain softmax gate).

A row is scored by its own domain's part (and the shared ones) only, so
that part's weights get gradients from its domain's rows alone; a row of an unknown domain gets
the mean of every domain's output (`by_domain`).

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers.domains import DomainGate
>>> gate = DomainGate(3, num_domains=2)  # 3 experts, a gate per domain
>>> weights = gate(tf.ones([2, 4]), tf.constant([1, 2]))
>>> weights.shape, [round(float(w), 5) for w in tf.reduce_sum(weights, axis=1)]
(TensorShape([2, 3]), [1.0, 1.0])
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def by_domain(values: tf.Tensor, domains: tf.Tensor) -> tf.Tensor:
  """Each row's slice of `values` [batch, D, ...] for its domain index
  (1..D); the mean over the D slices for index 0 (an unknown domain).

  >>> import tensorflow as tf
  >>> by_domain(tf.constant([[1., 3.], [1., 3.], [1., 3.]]), tf.constant([1, 2, 0])).numpy()
  array([1., 3., 2.], dtype=float32)
  """
  domains = tf.cast(domains, tf.int32)
  chosen = tf.gather(values, tf.maximum(domains - 1, 0), axis=1, batch_dims=1)
  known = tf.reshape(domains > 0, [-1] + [1] * (len(chosen.shape) - 1))
  return tf.where(known, chosen, tf.reduce_mean(values, axis=1))


class DomainGate(keras.layers.Dense):
  """A softmax gate of `units` weights, one per domain (`num_domains` > 0:
  a row's gate is its domain's) or one for all (`num_domains` 0)."""

  def __init__(self, units: int, num_domains: int = 0, **kwargs):
    super().__init__(units * max(num_domains, 1), **kwargs)
    self.gate_units, self.num_domains = units, num_domains

  def call(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> tf.Tensor:
    logits = super().call(inputs)
    if self.num_domains:
      logits = by_domain(tf.reshape(logits, [-1, self.num_domains, self.gate_units]),
                         unknown_if_none(domains, inputs))
    return tf.nn.softmax(logits)


def unknown_if_none(domains: tf.Tensor | None, inputs: tf.Tensor) -> tf.Tensor:
  """`domains`, or index 0 (unknown) for every row of `inputs` when None."""
  return tf.zeros(tf.shape(inputs)[:1], tf.int64) if domains is None else domains
