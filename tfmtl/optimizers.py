"""Optimizers for large embedding tables.

Keras' Adam turns a sparse (embedding) gradient into dense work: every step
decays the moments of every row and moves every row, so a step over a
1M-item table costs as much as the whole table. `LazyAdam` (as TF Addons'
was) updates only the rows in the batch: their moments and weights follow
Adam, and the other rows wait, untouched, until they are seen again. Dense
gradients (towers, heads) get plain Adam. `train.optimizer: lazy_adam`
picks it; with `adam` and an id table over `DENSE_ADAM_WARNING_ROWS` rows,
training logs a warning that says so (how much slower Adam is at 1M
items: BENCHMARKS.md, Scaling).

With `model.tpu_embedding` on a TPU, the TPU embedding engine updates the
tables itself, with `tpu_embedding_optimizer`'s version of the same
optimizer (its Adam is lazy too).

Example:

>>> import tensorflow as tf
>>> table = tf.Variable(tf.ones([4, 2]))
>>> optimizer = LazyAdam(0.1)
>>> optimizer.apply_gradients([(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([2])), table)])
<...>
>>> [round(float(x), 2) for x in table.numpy()[:, 0]]  # only row 2 moved
[1.0, 1.0, 0.9, 1.0]
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class LazyAdam(keras.optimizers.Adam):
  """Adam whose sparse updates touch only the rows in the batch (module doc)."""

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
      return super().update_step(gradient, variable)
    rows, position = tf.unique(gradient.indices)  # a row seen twice: its gradients summed
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
             / (1 - tf.pow(beta_1, step)))
    index = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[index], self._velocities[index]
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    epsilon = (self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step))
               if getattr(self, "adaptive_epsilon", False) else self.epsilon)
    variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


OPTIMIZERS = {"lazy_adam": LazyAdam}


def create_optimizer_variables(optimizer, variables) -> None:
  """Creates `optimizer`'s variables (step count, slots) for `variables` now.

  Keras otherwise creates them inside its first traced train step, and a
  `tf.function` that creates variables is traced a second time to run
  without creating them. Call it in the strategy's scope.

  >>> import tensorflow as tf
  >>> for optimizer in (keras.optimizers.Adam(), keras.optimizers.legacy.Adam()):
  ...   create_optimizer_variables(optimizer, [tf.Variable(tf.ones([3]))])
  ...   print(type(optimizer).__module__, len(optimizer.variables()))  # step count, m, v
  tf_keras.src.optimizers.adam 3
  tf_keras.src.optimizers.legacy.adam 3
  """
  if hasattr(optimizer, "build"):  # Keras' optimizer
    optimizer.build(variables)
  else:  # Keras' legacy OptimizerV2, which has no public way to do it
    optimizer._create_all_weights(variables)


DENSE_ADAM_WARNING_ROWS = 100_000  # about where Adam's every-row update outgrows the step


TPU_EMBEDDING_OPTIMIZERS = {  # `train.optimizer` names the TPU embedding engine runs
    "adam": tf.tpu.experimental.embedding.Adam,
    "lazy_adam": tf.tpu.experimental.embedding.Adam,
    "adagrad": tf.tpu.experimental.embedding.Adagrad,
    "sgd": tf.tpu.experimental.embedding.SGD,
    "ftrl": tf.tpu.experimental.embedding.FTRL,
}


def tpu_embedding_optimizer(name: str, learning_rate: float):
  """The TPU embedding engine's optimizer for `train.optimizer` `name`
  (a key of `TPU_EMBEDDING_OPTIMIZERS`).

  >>> tpu_embedding_optimizer("lazy_adam", 0.01).learning_rate
  0.01
  """
  return TPU_EMBEDDING_OPTIMIZERS[name](learning_rate=learning_rate)
