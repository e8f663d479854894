"""Mixed precision (`train.precision`): 16-bit compute, float32 weights,
embeddings, logits and losses, and float32 exports."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfmtl import runs, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.data import make_dataset
from tfmtl.serving import export_model


def _config(tmp_path, precision, *overrides):
  return ExperimentConfig().with_overrides([
      "name=tiny", "train.epochs=3", "train.batch_size=64", f"train.precision={precision}",
      "model.multitask.type=mmoe", "model.multitask.layers=[16]",
      "model.multitask.cross_layers=1", f"train.run_dir={tmp_path / precision}", *overrides])


@pytest.fixture(scope="module")
def float32_losses(tmp_path_factory, tiny_prepared):
  model = training.fit(_config(tmp_path_factory.mktemp("f32"), "float32"), tiny_prepared,
                       verbose=0)
  return model.history.history


@pytest.mark.parametrize("precision, compute_dtype",
                         [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_trains_in_16_bits_to_the_float32_losses(
    tmp_path, tiny_prepared, float32_losses, precision, compute_dtype):
  model = training.fit(_config(tmp_path, precision), tiny_prepared, verbose=0)
  assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
  hidden = model.query_tower.dense_layers[0]
  assert (hidden.compute_dtype, hidden.dtype) == (compute_dtype, "float32")
  assert model.ranking.block.compute_dtype == compute_dtype
  assert {v.dtype for v in model.trainable_variables} == {tf.float32}
  assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer) == (
      precision == "mixed_float16")
  if precision == "mixed_float16":  # gradients of the scaled loss overflowed at first
    assert float(model.optimizer.loss_scale) < 2 ** 15
  batch = next(iter(make_dataset(tiny_prepared.data, tiny_prepared.split.train[:8],
                                 model.encoder, 8)))
  assert {name: output.dtype for name, output in model(batch).items()} == {
      "query_embedding": tf.float32, "candidate_embedding": tf.float32,
      "rating": tf.float32, "like": tf.float32}
  history = model.history.history
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    assert np.isfinite(history[name]).all(), name
    assert history[name][-1] < history[name][0], name  # it learns
    assert history[name][-1] == pytest.approx(float32_losses[name][-1], rel=0.1), name


def test_a_mixed_precision_run_reloads_and_exports_float32_signatures(tmp_path, tiny_prepared):
  config = _config(tmp_path, "mixed_bfloat16", "train.epochs=1")
  model = training.fit(config, tiny_prepared, verbose=0)
  run_dir = runs.save_run(tmp_path / "run", config, tiny_prepared, model)
  _, reloaded = runs.load_run(run_dir)
  assert reloaded.query_tower.dense_layers[0].compute_dtype == "bfloat16"
  export = export_model(reloaded, tmp_path / "saved_models", "tiny", top_k=5)
  signatures = tf.saved_model.load(str(export)).signatures
  users = tiny_prepared.data.users.iloc[:3]
  request = {"user_id": tf.constant(users["user_id"].to_numpy(dtype=object).astype(bytes)),
             "taste": tf.constant(users["taste"].to_numpy(dtype=object).astype(bytes)),
             "age": tf.constant(users["age"].to_numpy(np.float32))}
  retrieved = signatures["serving_default"](**request)
  assert retrieved["scores"].dtype == tf.float32 and retrieved["scores"].shape == (3, 5)
  ranked = signatures["rank"](**request, item_id=tf.constant([[b"i0", b"i1"]] * 3))
  assert ranked["rating"].dtype == tf.float32 and np.isfinite(ranked["rating"].numpy()).all()


def test_an_unknown_precision_is_named():
  with pytest.raises(ConfigError, match=r"train.precision: unknown value 'float16'.*"
                                        r"mixed_float16"):
    ExperimentConfig().with_overrides(["train.precision=float16"])
