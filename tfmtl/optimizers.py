"""Optimizers for large embedding tables, and learning-rate schedules.

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

Every optimizer takes `learning_rate`'s schedule (`train.learning_rate_schedule`:
constant, cosine or exponential decay, after an optional linear warm-up).

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

from typing import Optional

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
SCHEDULES = ("constant", "cosine", "exponential")  # `train.learning_rate_schedule`


class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
  """A linear warm-up from 0 to `after(0)` over `warmup_steps` steps, then
  `after`, counted from the warm-up's end.

  >>> rate = WarmUp(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), 4)
  >>> [round(float(rate(step)), 4) for step in (0, 3, 4, 14)]
  [0.025, 0.1, 0.1, 0.05]
  """

  def __init__(self, after, warmup_steps: int):
    super().__init__()
    self.after = after
    self.warmup_steps = warmup_steps

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    target = tf.cast(self.after(0), tf.float32)
    warming = target * (step + 1) / self.warmup_steps
    return tf.where(step < self.warmup_steps, warming,
                    tf.cast(self.after(tf.maximum(step - self.warmup_steps, 0)), tf.float32))

  def get_config(self):
    return {"after": keras.optimizers.schedules.serialize(self.after),
            "warmup_steps": self.warmup_steps}

  @classmethod
  def from_config(cls, config):
    return cls(keras.optimizers.schedules.deserialize(config["after"]), config["warmup_steps"])


def learning_rate(train, steps_per_epoch: Optional[int] = None):
  """`train.learning_rate` under `train.learning_rate_schedule`: a float
  (`constant`, no warm-up) or a Keras `LearningRateSchedule` over
  `train.epochs` epochs of `steps_per_epoch` steps. `cosine` decays to 0
  at the last step, `exponential` multiplies the rate by `train.decay_rate`
  every epoch; `train.warmup_steps` first ramp it up from 0 (`WarmUp`).
  Without `steps_per_epoch` (a model built to predict), the constant rate.

  >>> from tfmtl.config import TrainConfig
  >>> train = TrainConfig(epochs=2, learning_rate_schedule="cosine")
  >>> rate = learning_rate(train, steps_per_epoch=5)
  >>> [round(float(rate(step)), 4) for step in (0, 5, 10)]
  [0.01, 0.005, 0.0]
  """
  schedules = keras.optimizers.schedules
  rate, schedule = train.learning_rate, train.learning_rate_schedule
  if steps_per_epoch is None or (schedule == "constant" and not train.warmup_steps):
    return rate
  decay_steps = max(train.epochs * steps_per_epoch - train.warmup_steps, 1)
  after = (schedules.CosineDecay(rate, decay_steps) if schedule == "cosine" else
           schedules.ExponentialDecay(rate, steps_per_epoch, train.decay_rate)
           if schedule == "exponential" else
           schedules.PolynomialDecay(rate, 1, end_learning_rate=rate))  # constant, after warm-up
  return WarmUp(after, train.warmup_steps) if train.warmup_steps else after


def last_learning_rate(optimizer) -> float:
  """The learning rate `optimizer`'s last step used (under a schedule, the
  schedule's value at that step)."""
  rate = optimizer.learning_rate
  if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
    rate = rate(tf.maximum(optimizer.iterations - 1, 0))
  return float(keras.backend.get_value(rate))


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
