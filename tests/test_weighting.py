"""Task-loss weighting: fixed, learned uncertainty and dynamic weight averaging."""

import numpy as np
import pytest
import tf_keras as keras

import tfmtl
from tfmtl.config import ExperimentConfig
from tfmtl.data import make_dataset
from tfmtl.training import build_model
from tfmtl.weighting import DynamicWeightAveraging


@pytest.fixture(scope="module")
def noisy_data(tiny_data):
  """The tiny data plus a `noise` column: pure Gaussian noise, std 3."""
  interactions = tiny_data.interactions.copy()
  interactions["noise"] = np.random.default_rng(1).normal(0.0, 3.0, len(interactions))
  return tfmtl.data.InteractionData.from_frames(
      interactions, tiny_data.users, tiny_data.items, tiny_data.user_features,
      tiny_data.item_features, name="noisy")


def fit_history(data, weighting: dict, epochs: int, weights=(1.0, 1.0)):
  config = ExperimentConfig.from_dict({
      "model": {"embedding_dim": 16, "loss_weighting": weighting},
      "train": {"learning_rate": 0.02},
      "tasks": {"rating": {"type": "regression", "label": "rating", "weight": weights[0]},
                "noise": {"type": "regression", "label": "noise", "weight": weights[1]}}})
  keras.utils.set_random_seed(0)
  model = build_model(config, tfmtl.FeatureVocabulary.build(data, data.interactions),
                      data.items)
  dataset = make_dataset(data, data.interactions, model.encoder, 64, shuffle=True, seed=0)
  return model, model.fit(dataset, epochs=epochs, verbose=0).history


def test_fixed_weights_are_the_configured_ones_and_logged_every_epoch(noisy_data):
  _, history = fit_history(noisy_data, {"type": "fixed"}, epochs=2, weights=(1.0, 0.25))
  assert history["rating_weight"] == pytest.approx([1.0, 1.0])
  assert history["noise_weight"] == pytest.approx([0.25, 0.25])
  assert len(history["rating_loss"]) == len(history["noise_loss"]) == 2


def test_uncertainty_weighting_turns_down_a_task_that_is_pure_noise(noisy_data):
  model, history = fit_history(noisy_data, {"type": "uncertainty"}, epochs=30)
  noise, rating = np.array(history["noise_weight"]), np.array(history["rating_weight"])
  assert noise[-1] < 0.5 * noise[0]  # the noise task's weight falls ...
  assert rating[-1] > noise[-1] * 3  # ... far below the learnable task's
  log_variances = dict(zip(model.loss_weighting.task_names,
                           model.loss_weighting.log_variances.numpy()))
  assert log_variances["noise"] > log_variances["rating"]
  # Its learned variance heads for the noise's true variance, 9.
  assert np.exp(log_variances["noise"]) > 3


def test_dwa_gives_more_weight_to_the_task_whose_loss_falls_slower():
  weighting = DynamicWeightAveraging({"fast": 1.0, "slow": 2.0}, temperature=2.0)
  weighting.update(previous=np.array([1.0, 1.0]), before_previous=np.array([2.0, 1.0]))
  factors = weighting.dwa_factors.numpy()
  expected = 2 * np.exp([0.25, 0.5]) / np.exp([0.25, 0.5]).sum()
  np.testing.assert_allclose(factors, expected, rtol=1e-6)
  assert factors.sum() == pytest.approx(2.0)


def test_dwa_updates_the_weights_between_epochs_during_fit(noisy_data):
  _, history = fit_history(noisy_data, {"type": "dwa", "temperature": 1.0}, epochs=4)
  rating, noise = np.array(history["rating_weight"]), np.array(history["noise_weight"])
  np.testing.assert_allclose(rating[:2], 1.0)  # two epochs of losses are needed first
  np.testing.assert_allclose(rating + noise, 2.0, rtol=1e-5)
  ratio = {name: np.array(history[f"{name}_loss"]) for name in ("rating", "noise")}
  faster = "rating" if ratio["rating"][1] / ratio["rating"][0] < \
      ratio["noise"][1] / ratio["noise"][0] else "noise"
  assert history[f"{faster}_weight"][2] < 1.0  # the faster-falling loss gets less
