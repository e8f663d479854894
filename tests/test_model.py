"""The multi-task model: outputs, losses, gradients and Keras fit/evaluate."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl import training
from tfmtl.config import (ExperimentConfig, ModelConfig, MultiTaskConfig, TaskConfig,
                          default_tasks)
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


def test_catalogue_embeddings_are_each_items_candidate_embedding(model_and_batch, tiny_data):
  """The matrix retrieval and the export score against: one row per item,
  the candidate tower of that item's own features."""
  model, batch = model_and_batch
  catalogue = model.catalogue_embeddings().numpy()
  assert catalogue.shape == (len(tiny_data.items), 16)
  row_of = {index: row for row, index in enumerate(model.catalogue_features["item_id"].numpy())}
  rows = [row_of[index] for index in batch["item_id"].numpy()]
  np.testing.assert_allclose(model(batch)["candidate_embedding"].numpy(), catalogue[rows],
                             atol=1e-5)
  # A few items at a time (as the export computes it), the same matrix.
  np.testing.assert_allclose(model.catalogue_embeddings(chunk=7).numpy(), catalogue, atol=1e-6)


def test_loss_is_the_weighted_sum_of_task_losses(tiny_data, model_and_batch):
  model, batch = model_and_batch
  total = model.compute_loss(batch, training=True).numpy()
  per_task = {name: tracker.result().numpy() for name, tracker in model.task_losses.items()}
  weights = {name: task.weight for name, task in default_tasks().items()}
  assert np.isfinite(total)
  assert total == pytest.approx(sum(weights[n] * per_task[n] for n in per_task), rel=1e-5)



def test_fit_logs_the_epochs_mean_loss_the_weighted_sum_of_the_task_means(tiny_data):
  """`loss` and `total_loss` are epoch means, not the last batch's values."""
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items,
                               ModelConfig(embedding_dim=8, l2=1e-3))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  # 720 examples in batches of 100: the last batch (20) is smaller than the others
  history = model.fit(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 100),
                      epochs=3, verbose=0).history
  weights = {name: task.weight for name, task in default_tasks().items()}
  for epoch in range(3):
    weighted = sum(weight * history[f"{name}_loss"][epoch] for name, weight in weights.items())
    assert history["loss"][epoch] == pytest.approx(weighted, rel=1e-5)
    assert history["regularization_loss"][epoch] > 0
    assert history["total_loss"][epoch] == pytest.approx(
        weighted + history["regularization_loss"][epoch], rel=1e-5)

ALL_TASKS = {**default_tasks(),
             "taste": TaskConfig(type="classification", label="taste"),
             "genre": TaskConfig(type="classification", label="genres"),
             "watched": TaskConfig(type="implicit", num_negatives=2),
             "year_code": TaskConfig(type="autoencoder", label="year")}
# The towers and head each task's gradient must reach.
TASK_REACH = {"retrieval": ({"query_tower", "candidate_tower"}, set()),
              "rating": ({"query_tower", "candidate_tower"}, {"rating"}),
              "like": ({"query_tower", "candidate_tower"}, {"like"}),
              "taste": ({"query_tower"}, {"taste"}),
              "genre": ({"candidate_tower"}, {"genre"}),
              "watched": ({"query_tower", "candidate_tower"}, {"watched"}),
              "year_code": ({"candidate_tower"}, {"year_code"})}


@pytest.mark.parametrize("task_name", list(TASK_REACH))
def test_every_task_sends_gradients_to_its_towers_and_its_own_head(tiny_data, task_name):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  tasks = {name: TaskConfig(**{**vars(task), "weight": float(name == task_name)})
           for name, task in ALL_TASKS.items()}
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=8),
                               tasks)
  batch = next(iter(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64)))
  model(batch)  # create the variables
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  touched = {v.name for v, g in zip(variables, tape.gradient(loss, variables))
             if g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0}
  towers, heads = TASK_REACH[task_name]
  assert {t for t in ("query_tower", "candidate_tower")
          if any(f"/{t}/" in name for name in touched)} == towers
  assert {m.group(1) for m in map(re.compile(r"(?:^|/)(\w+?)_head/").search, touched) if m} == heads


def test_a_classification_task_takes_its_label_out_of_the_tower_inputs(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, tasks=ALL_TASKS)
  assert set(model.query_tower.features) == {"age"}  # taste is predicted
  assert set(model.candidate_tower.features) == {"year"}  # genres are predicted
  # (an autoencoder's label, year, stays an input: its head decodes it)


def test_a_classification_label_must_be_a_feature(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  with pytest.raises(ValueError, match=r"tasks.occupation.label: 'occupation' is not"):
    tfmtl.MultiTaskModel(vocabulary, tiny_data.items, tasks={
        "occupation": TaskConfig(type="classification", label="occupation")})


def test_tasks_declared_in_config_alone_train_and_report_metrics(tiny_data):
  from tfmtl.model import build_model
  from tfmtl.config import ExperimentConfig
  config = ExperimentConfig.from_dict({"model": {"embedding_dim": 16}, "tasks": {
      "retrieval": {"type": "retrieval", "temperature": 0.1},
      "taste": {"type": "classification", "label": "taste", "weight": 0.5},
      "genre": {"type": "classification", "label": "genres", "layers": []}}})
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = build_model(config, vocabulary, tiny_data.items)
  keras.utils.set_random_seed(0)
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0)
  history = model.fit(dataset, epochs=10, verbose=0).history
  for name in ("taste", "genre"):
    assert history[f"{name}_loss"][-1] < 0.8 * history[f"{name}_loss"][0], name
  metrics = model.evaluate(dataset, return_dict=True, verbose=0)
  assert metrics["taste_accuracy"] > 0.9  # three tastes, learnt from ratings alone
  assert metrics["genre_binned_auc"] > 0.7


def test_an_implicit_task_learns_from_interactions_without_ratings():
  """Users watch items of their taste (item % 3 == user % 3); no ratings at all."""
  import pandas as pd
  rng = np.random.default_rng(0)
  interactions = pd.DataFrame(
      [(f"u{user}", f"i{item}") for user in range(60)
       for item in rng.choice(np.arange(user % 3, 60, 3), 8, replace=False)],
      columns=["user_id", "item_id"])
  data = tfmtl.data.InteractionData.from_frames(interactions)
  vocabulary = tfmtl.FeatureVocabulary.build(data, data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(embedding_dim=16), {
      "retrieval": TaskConfig(type="retrieval", temperature=0.1),
      "watched": TaskConfig(type="implicit", num_negatives=4)})
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  keras.utils.set_random_seed(0)
  dataset = make_dataset(data, data.interactions, model.encoder, 64, shuffle=True, seed=0)
  model.fit(dataset, epochs=10, verbose=0)
  metrics = model.evaluate(dataset, return_dict=True, verbose=0)
  assert metrics["watched_binned_auc"] > 0.8  # a third of the catalogue is of the user's taste


def test_evaluate_reports_every_task_metric(model_and_batch, tiny_data):
  model, _ = model_and_batch
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 128)
  metrics = model.evaluate(dataset, return_dict=True, verbose=0)
  for name in ("factorized_top_k/top_10_categorical_accuracy", "rating_rmse",
               "rating_mae", "like_binned_auc", "retrieval_loss", "rating_loss", "like_loss"):
    assert name in metrics and np.isfinite(metrics[name]), name
  assert "like_auc" not in metrics  # the exact AUC is `evaluate_model`'s


def test_training_logs_only_losses_when_training_metrics_are_off(model_and_batch, tiny_data):
  model, _ = model_and_batch
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 128)
  history = model.fit(dataset, epochs=1, verbose=0)
  assert sorted(history.history) == sorted(
      [f"{name}_{kind}" for name in default_tasks() for kind in ("loss", "weight")]
      + ["loss", "regularization_loss", "total_loss"])


def test_fit_lowers_every_task_loss(tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=16))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0)
  history = model.fit(dataset, epochs=15, verbose=0).history
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    assert history[name][-1] < history[name][0], name
  # `fit` created the model's and the optimizer's variables before the first
  # step: Keras traced its step once, not again to run without creating them.
  assert model.train_function.experimental_get_tracing_count() == 1


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
    {"type": "independent", "cross_layers": 2},
], ids=["shared_bottom", "mmoe", "ple", "dcn_cross"])
def test_each_multitask_block_is_chosen_by_config_and_trains(tiny_data, multitask, tmp_path):
  from tfmtl.model import build_model
  from tfmtl.config import ExperimentConfig
  from tfmtl.serving import export_model
  config = ExperimentConfig.from_dict({"model": {"embedding_dim": 16,
                                                 "multitask": multitask}})
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = build_model(config, vocabulary, tiny_data.items)
  assert model.ranking.block.name == multitask["type"]
  assert len(model.ranking.crosses) == multitask.get("cross_layers", 0)
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64,
                         shuffle=True, seed=0)
  history = model.fit(dataset, epochs=4, verbose=0).history
  assert history["rating_loss"][-1] < history["rating_loss"][0]
  ranked = tf.saved_model.load(str(export_model(model, tmp_path, "m"))).signatures["rank"](
      user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]), age=tf.constant([30.0]),
      item_id=tf.constant([["i1", "i2"]]))
  assert ranked["rating"].shape == (1, 2) and ranked["like"].shape == (1, 2)


def test_a_reconstruction_task_decodes_the_history_genre_profile(tiny_data):
  from tfmtl.data import Split
  from tfmtl.data.history import add_history
  empty = tiny_data.interactions.iloc[:0]
  train = add_history(Split(tiny_data.interactions, empty, empty), length=6).train
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, train, history_length=6)
  tasks = {"retrieval": TaskConfig(type="retrieval", weight=0.0),
           "profile": TaskConfig(type="reconstruction", label="genres", layers=[])}
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=8),
                               tasks)
  assert set(model.candidate_tower.features) == {"genres", "year"}  # still an input
  batch = next(iter(make_dataset(tiny_data, train, model.encoder, 64)))
  # The target: each genre's share among the genres of the history's items.
  profile = model.tasks["profile"].history_profile(batch["history"]).numpy()
  genres = tiny_data.items.set_index("item_id")["genres"]
  row = int(np.flatnonzero([len(h) > 0 for h in train["history"][:64]])[0])
  tokens = [t for item in train["history"][row].split("|") for t in genres[item].split("|")]
  columns = ["[UNK]", *vocabulary.tokens["genres"]]
  np.testing.assert_allclose(profile[row], [tokens.count(c) / len(tokens) for c in columns],
                             atol=1e-6)
  model(batch)
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  touched = {v.name for v, g in zip(variables, tape.gradient(loss, variables))
             if g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0}
  assert any("/query_tower/" in name for name in touched)
  assert not any("/candidate_tower/" in name for name in touched)
  model.compile(optimizer=keras.optimizers.Adam(0.02))
  history = model.fit(make_dataset(tiny_data, train, model.encoder, 64, shuffle=True, seed=0),
                      epochs=8, verbose=0).history
  assert history["profile_loss"][-1] < history["profile_loss"][0] - 0.05


def test_l1_and_l2_penalise_the_id_embeddings_and_the_towers_kernels(tiny_data):
  """The regularization loss is the configured penalties' formula over the
  id embeddings and every tower's dense kernels."""
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  config = ModelConfig(embedding_dim=8, l2=1e-3, l1=2e-3, tower_l2=3e-3, tower_l1=4e-3)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, config)
  model(next(iter(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64))))
  expected = 0.0
  for tower in (model.query_tower, model.candidate_tower):
    ids = tower.id_embedding.embeddings.numpy()
    expected += 1e-3 * np.square(ids).sum() + 2e-3 * np.abs(ids).sum()
    for layer in tower.dense_layers:
      kernel = layer.kernel.numpy()
      expected += 3e-3 * np.square(kernel).sum() + 4e-3 * np.abs(kernel).sum()
  assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("distance", ["squared", "cosine"])
def test_task_coupling_adds_its_formula_over_the_heads_weights(tiny_data, distance):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  config = ModelConfig(embedding_dim=8, multitask=MultiTaskConfig(
      coupling=0.5, coupling_distance=distance))
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, config)
  model(next(iter(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64))))
  heads = model.ranking.heads
  mine, theirs = (np.concatenate([w.ravel() for w in heads[task].get_weights()])
                  for task in ("rating", "like"))
  expected = (np.square(mine - theirs).sum() if distance == "squared" else
              1 - mine @ theirs / (np.linalg.norm(mine) * np.linalg.norm(theirs)))
  assert float(tf.add_n(model.losses)) == pytest.approx(0.5 * expected, rel=1e-5)


def test_task_coupling_pulls_two_heads_together(tiny_config_file):
  """Trained alike, with and without the penalty: coupled heads end closer."""
  distances = []
  for coupling in (0.0, 1.0):
    config = ExperimentConfig.from_file(tiny_config_file(
        model={"multitask": {"coupling": coupling}}, train={"validate_every": 0}))
    heads = training.fit(config, training.prepare(config), verbose=0).ranking
    distances.append(float(heads.coupling([("rating", "like")])))
  assert distances[1] < 0.5 * distances[0], distances
