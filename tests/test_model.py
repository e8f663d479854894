"""The multi-task model: outputs, losses, gradients and Keras fit/evaluate."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl.config import ModelConfig, TaskConfig, default_tasks
from tfmtl.data import make_dataset


@pytest.fixture
def model_and_batch(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items,
                               ModelConfig(embedding_dim=16, tower_layers=[32]))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  batch = next(iter(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64)))
  return model, batch


def test_call_gives_embeddings_and_one_prediction_per_ranking_task(model_and_batch):
  model, batch = model_and_batch
  outputs = model(batch)
  assert outputs["query_embedding"].shape == (64, 16)
  assert outputs["candidate_embedding"].shape == (64, 16)
  assert outputs["rating"].shape == (64,) and outputs["like"].shape == (64,)
  like = outputs["like"].numpy()
  assert ((like > 0) & (like < 1)).all()  # a probability


def test_catalogue_embeddings_cover_every_item(model_and_batch, tiny_data):
  model, _ = model_and_batch
  assert model.catalogue_embeddings().shape == (len(tiny_data.items), 16)


def test_loss_is_the_weighted_sum_of_task_losses(tiny_data, model_and_batch):
  model, batch = model_and_batch
  total = model.compute_loss(batch, training=True).numpy()
  per_task = {name: tracker.result().numpy() for name, tracker in model.task_losses.items()}
  weights = {name: task.weight for name, task in default_tasks().items()}
  assert np.isfinite(total)
  assert total == pytest.approx(sum(weights[n] * per_task[n] for n in per_task), rel=1e-5)


@pytest.mark.parametrize("task_name", ["retrieval", "rating", "like"])
def test_every_task_sends_gradients_to_both_towers_and_its_own_head(model_and_batch,
                                                                    task_name):
  model, batch = model_and_batch
  model(batch)  # create the variables
  model.task_configs = {name: TaskConfig(**{**vars(task), "weight": float(name == task_name)})
                        for name, task in default_tasks().items()}
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  touched = {v.name for v, g in zip(variables, tape.gradient(loss, variables))
             if g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0}
  assert any("/query_tower/" in name for name in touched)
  assert any("/candidate_tower/" in name for name in touched)
  heads = {match.group(1) for match in map(re.compile(r"/ranking/(\w+?)_head_").search,
                                              touched) if match}
  assert heads == (set() if task_name == "retrieval" else {task_name})


def test_evaluate_reports_every_task_metric(model_and_batch, tiny_data):
  model, _ = model_and_batch
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 128)
  metrics = model.evaluate(dataset, return_dict=True, verbose=0)
  for name in ("factorized_top_k/top_10_categorical_accuracy", "rating_rmse",
               "rating_mae", "like_auc", "retrieval_loss", "rating_loss", "like_loss"):
    assert name in metrics and np.isfinite(metrics[name]), name


def test_training_logs_only_losses_when_training_metrics_are_off(model_and_batch, tiny_data):
  model, _ = model_and_batch
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 128)
  history = model.fit(dataset, epochs=1, verbose=0)
  assert all(name.endswith("loss") for name in history.history)


def test_fit_lowers_every_task_loss(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=16))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0)
  history = model.fit(dataset, epochs=15, verbose=0).history
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    assert history[name][-1] < history[name][0], name


def test_fit_learns_the_planted_tastes(tiny_data):
  """Users of taste t rate items i with i % 3 == t high: they should rank them first."""
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=16))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  keras.utils.set_random_seed(0)
  model.fit(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0), epochs=15, verbose=0)
  users = tiny_data.users
  raw = {k: users[k].to_numpy(dtype=np.float32 if k == "age" else object)
         for k in ("user_id", "taste", "age")}
  scores = tf.linalg.matmul(model.query_tower(model.encoder(raw)),
                            model.catalogue_embeddings(), transpose_b=True).numpy()
  item_taste = np.array([int(i[1:]) % 3 for i in model.catalogue_item_ids])
  user_taste = np.array([int(u[1:]) % 3 for u in users["user_id"]])
  liked = item_taste[None, :] == user_taste[:, None]
  assert scores[liked].mean() > scores[~liked].mean()
  ratings = model(model.encoder(tiny_data.examples(tiny_data.interactions)))["rating"].numpy()
  high = tiny_data.interactions["rating"].to_numpy() >= 4
  assert ratings[high].mean() > ratings[~high].mean() + 1.0


def test_a_ranking_only_model_has_no_retrieval_metric(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items,
                               tasks={"rating": TaskConfig(type="regression", label="rating")})
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 128)
  metrics = model.evaluate(dataset, return_dict=True, verbose=0)
  assert not any("factorized_top_k" in name for name in metrics)
  assert "rating_rmse" in metrics


@pytest.mark.parametrize("multitask", [
    {"type": "shared_bottom", "layers": [16]},
    {"type": "mmoe", "layers": [16], "num_experts": 3},
    {"type": "ple", "layers": [16], "num_levels": 2},
], ids=lambda m: m["type"])
def test_each_multitask_block_is_chosen_by_config_and_trains(tiny_data, multitask, tmp_path):
  from tfmtl import training
  from tfmtl.config import ExperimentConfig
  from tfmtl.serving import export_model
  config = ExperimentConfig.from_dict({"model": {"embedding_dim": 16,
                                                 "multitask": multitask}})
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = training.build_model(config, vocabulary, tiny_data.items)
  assert model.ranking.block.name == multitask["type"]
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0)
  history = model.fit(dataset, epochs=4, verbose=0).history
  assert history["rating_loss"][-1] < history["rating_loss"][0]
  ranked = tf.saved_model.load(str(export_model(model, tmp_path, "m"))).signatures["rank"](
      user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]), age=tf.constant([30.0]),
      item_id=tf.constant([["i1", "i2"]]))
  assert ranked["rating"].shape == (1, 2) and ranked["like"].shape == (1, 2)
