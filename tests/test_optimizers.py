"""LazyAdam: Adam on the rows in the batch, nothing on the others."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfmtl import training
from tfmtl.config import ExperimentConfig
from tfmtl.optimizers import LazyAdam, last_learning_rate
from tfmtl.training import build_model


def _sparse(rows, values):
  return tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(rows))


def _steps(optimizer, gradients):
  table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
  for gradient in gradients:
    optimizer.apply_gradients([(gradient, table)])
  return table.numpy()


def test_dense_gradients_get_plain_adam():
  gradients = [tf.constant(np.full([6, 2], g, np.float32)) for g in (0.5, -1.0, 2.0)]
  np.testing.assert_allclose(_steps(LazyAdam(0.1), gradients),
                             _steps(keras.optimizers.Adam(0.1), gradients), rtol=1e-6)


def test_rows_in_the_batch_follow_adam_and_the_others_stay():
  first, second = _sparse([1, 4], [[1.0, 2.0], [3.0, 4.0]]), _sparse([4], [[-1.0, 1.0]])
  lazy = _steps(LazyAdam(0.1), [first, second])
  adam = _steps(keras.optimizers.Adam(0.1), [first, second])
  start = np.arange(12, dtype=np.float32).reshape(6, 2)
  np.testing.assert_array_equal(lazy[[0, 2, 3, 5]], start[[0, 2, 3, 5]])  # never seen
  np.testing.assert_allclose(lazy[4], adam[4], rtol=1e-6)  # seen in both steps: as Adam
  assert not np.allclose(adam[1], _steps(keras.optimizers.Adam(0.1), [first])[1])
  np.testing.assert_allclose(lazy[1], _steps(LazyAdam(0.1), [first])[1])  # waits unseen


def test_a_row_twice_in_a_batch_gets_its_gradients_summed():
  twice = _steps(LazyAdam(0.1), [_sparse([3, 3], [[1.0, 0.0], [2.0, 0.0]])])
  once = _steps(LazyAdam(0.1), [_sparse([3], [[3.0, 0.0]])])
  np.testing.assert_allclose(twice, once, rtol=1e-6)


def test_the_config_names_it(tiny_data):
  from tfmtl.features import FeatureVocabulary
  config = ExperimentConfig().with_overrides(["train.optimizer=lazy_adam"])
  model = build_model(config, FeatureVocabulary.build(tiny_data, tiny_data.interactions),
                      tiny_data.items)
  assert isinstance(model.optimizer, LazyAdam)


@pytest.mark.parametrize("optimizer", ["adam", "Adam", "lazy_adam"])
def test_adam_over_a_table_past_the_threshold_warns(tmp_path, tiny_prepared, monkeypatch, caplog,
                                                    optimizer):
  monkeypatch.setattr(training, "DENSE_ADAM_WARNING_ROWS", 50)  # the tiny set: 60 users, 40 items
  config = ExperimentConfig().with_overrides([
      "name=tiny", "train.epochs=1", "train.batch_size=64", f"train.optimizer={optimizer}",
      f"train.run_dir={tmp_path / 'run'}"])
  training.fit(config, tiny_prepared, verbose=0)
  warnings = [record.getMessage() for record in caplog.records if "moves all" in record.getMessage()]
  users = tiny_prepared.vocabulary.size("user_id")
  assert users > 50 > tiny_prepared.vocabulary.size("item_id")
  assert warnings == ([] if optimizer == "lazy_adam" else
                      [f"train.optimizer: adam moves all {users} rows of the user_id table at every "
                       "step (Keras' Adam is dense); lazy_adam moves only the batch's rows, which is "
                       "several times faster on large catalogues (tfmtl.optimizers)"])


class _StepRates(keras.callbacks.Callback):
  """The learning rate each training step used."""

  def on_train_begin(self, logs=None):
    self.rates = []

  def on_train_batch_end(self, batch, logs=None):
    self.rates.append(last_learning_rate(self.model.optimizer))


@pytest.mark.parametrize("schedule, optimizer", [
    ("constant", "adagrad"), ("cosine", "adam"), ("exponential", "sgd")])
def test_each_schedule_sets_the_rate_of_every_step(tiny_config_file, schedule, optimizer):
  """Three warm-up steps from 0, then the schedule, over 2 epochs, under
  any optimizer."""
  config = ExperimentConfig.from_file(tiny_config_file(train={
      "epochs": 2, "steps_per_execution": 1, "validate_every": 0, "optimizer": optimizer,
      "learning_rate": 0.02, "learning_rate_schedule": schedule, "warmup_steps": 3,
      "decay_rate": 0.5}))
  rates = _StepRates()
  training.fit(config, training.prepare(config), verbose=0, callbacks=[rates])
  total = len(rates.rates)
  per_epoch, after = total // 2, np.arange(total - 3)
  decayed = {"constant": np.full(total - 3, 0.02),
             "cosine": 0.01 * (1 + np.cos(np.pi * after / (total - 3))),
             "exponential": 0.02 * 0.5 ** (after / per_epoch)}[schedule]
  np.testing.assert_allclose(rates.rates, [0.02 / 3, 0.04 / 3, 0.02, *decayed], rtol=1e-5)
