"""Training from a config: a real short run on MovieLens, and saved runs."""

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras

import tfmtl
from tfmtl import evaluation, runs, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.data import Split
from tfmtl.model import MultiTaskModel


def test_short_real_training_beats_popularity_on_protocol_b(movielens):
  config = ExperimentConfig().with_overrides(["train.epochs=5"])
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  metrics = evaluation.evaluate_model(model, prepared.data, prepared.split, ks=[10])
  assert list(metrics) == evaluation.metric_names(config.tasks, [10])
  popularity = evaluation.evaluate_popularity(prepared.data, prepared.split, ks=[10])
  assert metrics["recall@10"] > popularity["recall@10"] + 0.03
  assert metrics["ndcg@10"] > popularity["ndcg@10"] + 0.03
  assert metrics["rating_rmse"] < 1.0 and metrics["like_auc"] > 0.7


def _files_config(tmp_path, tiny_data, **overrides):
  tiny_data.interactions.to_csv(tmp_path / "ratings.csv", index=False)
  tiny_data.users.to_csv(tmp_path / "users.csv", index=False)
  tiny_data.items.to_csv(tmp_path / "items.csv", index=False)
  return ExperimentConfig.from_dict({
      "name": "tiny",
      "data": {"source": "files", "interactions": str(tmp_path / "ratings.csv"),
               "users": str(tmp_path / "users.csv"), "items": str(tmp_path / "items.csv"),
               "user_features": {"taste": "categorical",
                                 "age": {"type": "bucketized", "num_buckets": 4}},
               "item_features": {"genres": "multi_categorical",
                                 "year": {"type": "bucketized", "num_buckets": 4}}},
      "train": {"epochs": 2, "batch_size": 64, "run_dir": str(tmp_path / "run")},
      **overrides})


def test_a_saved_run_reloads_with_the_same_predictions(tmp_path, tiny_data):
  config = _files_config(tmp_path, tiny_data)
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  run_dir = runs.save_run(runs.default_run_dir(config), config, prepared, model)
  assert sorted(p.name for p in run_dir.iterdir()) == [
      "catalogue.parquet", "config.yaml", "history.json", "tfmtl_run.json", "vocabulary.json",
      "weights"]
  assert not run_dir.with_name(".run.tmp").exists()
  reloaded_config, reloaded = runs.load_run(run_dir)
  assert reloaded_config == config
  np.testing.assert_allclose(reloaded.catalogue_embeddings().numpy(),
                             model.catalogue_embeddings().numpy(), atol=1e-6)


def test_evaluate_batch_size_reaches_every_evaluation(tmp_path, tiny_data, monkeypatch):
  from tfmtl import experiment
  config = _files_config(tmp_path, tiny_data, evaluate={"ks": [10], "batch_size": 7})
  config = config.with_overrides(["train.epochs=1"])
  batch_sizes = []  # (what was scored, rows a batch)
  for name in ("retrieval_metrics", "ranking_metrics"):
    real = getattr(evaluation, name)
    def spy(*args, _real=real, _name=name, **kwargs):
      call = inspect.signature(_real).bind(*args, **kwargs)
      call.apply_defaults()
      batch_sizes.append((_name, call.arguments["batch_size"]))
      return _real(*args, **kwargs)
    monkeypatch.setattr(evaluation, name, spy)
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)  # validation metrics after the epoch
  assert batch_sizes == [("retrieval_metrics", 7), ("ranking_metrics", 7)]
  experiment.evaluate(config, prepared, model)  # the model's test metrics, popularity's, EASE's
  assert batch_sizes[2:] == [("retrieval_metrics", 7), ("ranking_metrics", 7),
                             ("retrieval_metrics", 7), ("retrieval_metrics", 7)]


def test_a_run_whose_checkpoint_does_not_match_its_config_is_an_error(tmp_path, tiny_data):
  config = _files_config(tmp_path, tiny_data)
  prepared = training.prepare(config)
  run_dir = runs.save_run(tmp_path / "run", config, prepared,
                              training.fit(config, prepared, verbose=0))
  changed = config.with_overrides(["model.id_embedding_dim=7"])
  (run_dir / "config.yaml").write_text(changed.to_yaml())
  with pytest.raises(ValueError, match=r"weights: the checkpoint is unreadable or does not "
                                       r"match the model that .*config.yaml and "
                                       r"vocabulary.json describe: "):
    runs.load_run(run_dir)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda run: _truncate(next((run / "weights").glob("model.data-*"))),
     r"weights: the checkpoint is unreadable or does not match the model"),
    (lambda run: (run / "weights" / "model.index").unlink(),
     r"not a tfmtl run \(weights/model.index is missing\)"),
    (lambda run: _truncate(run / "vocabulary.json"),
     r"vocabulary.json: not a readable vocabulary \(JSONDecodeError"),
    (lambda run: _truncate(run / "history.json"), r"history.json: not valid JSON"),
], ids=["weights", "index", "vocabulary", "history"])
def test_a_damaged_run_is_an_error_naming_the_file(tmp_path, tiny_prepared, damage, message):
  from tfmtl.reports import run_report
  config = ExperimentConfig().with_overrides(["name=tiny", "model.embedding_dim=8",
                                              "train.epochs=1", "train.validate_every=0"])
  run_dir = runs.save_run(tmp_path / "run", config, tiny_prepared,
                              training.fit(config, tiny_prepared, verbose=0))
  damage(run_dir)
  with pytest.raises(ValueError if "index" not in message else FileNotFoundError, match=message):
    (run_report if "history" in message else runs.load_run)(run_dir)


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"not a tfmtl run \(config.yaml is missing\)"):
    runs.load_run(tmp_path)


def test_a_task_label_missing_from_the_data_is_a_config_error(tmp_path, tiny_data):
  config = _files_config(tmp_path, tiny_data, tasks={
      "clicks": {"type": "binary", "label": "clicked", "threshold": 1}})
  with pytest.raises(ConfigError, match=r"tasks.clicks.label: column 'clicked'"):
    training.prepare(config)


def test_a_run_with_learned_weights_and_auxiliary_heads_reloads_and_reports_them(
    tmp_path, tiny_data, tfmtl_cli):
  config = _files_config(tmp_path, tiny_data, model={"loss_weighting": {"type": "uncertainty"}},
                         tasks={"retrieval": {"type": "retrieval"},
                                "genre": {"type": "classification", "label": "genres"},
                                "taste": {"type": "classification", "label": "taste"}})
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  run_dir = runs.save_run(tmp_path / "run", config, prepared, model)
  _, reloaded = runs.load_run(run_dir)
  np.testing.assert_allclose(reloaded.loss_weighting.log_variances.numpy(),
                             model.loss_weighting.log_variances.numpy())
  assert np.abs(model.loss_weighting.log_variances.numpy()).max() > 0  # they were trained
  items = model.candidate_tower(model.catalogue_features)
  np.testing.assert_allclose(reloaded.tasks["genre"].head(items).numpy(),
                             model.tasks["genre"].head(items).numpy(), atol=1e-5)

  # `evaluate` reports each classification task over the distinct test users or items.
  result = tfmtl_cli("evaluate", "--run", run_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Classification report of task 'taste'" in result.stdout
  metrics = json.loads((run_dir / "metrics.json").read_text())
  test = prepared.split.test
  taste = metrics["classification"]["taste"]
  users = tiny_data.users.set_index("user_id").loc[test["user_id"].unique(), "taste"]
  assert {value: taste[value]["support"] for value in ("t0", "t1", "t2")} == \
      users.value_counts().to_dict()
  assert metrics["model"]["taste_micro_f1"] == taste["accuracy"] > 0.5  # 3 planted tastes
  genres = tiny_data.items.set_index("item_id").loc[test["item_id"].unique(), "genres"]
  assert metrics["classification"]["genre"]["Action"]["support"] == \
      genres.str.split("|").explode().eq("Action").sum()
  assert 0 < metrics["model"]["genre_macro_f1"] <= 1
  from tfmtl.reports import run_report
  assert "## Classification report: taste" in \
      run_report(run_dir).read_text()


def test_a_classification_label_that_is_not_a_feature_is_a_config_error(tmp_path, tiny_data):
  config = _files_config(tmp_path, tiny_data, tasks={
      "job": {"type": "classification", "label": "occupation"}})
  with pytest.raises(ConfigError, match=r"tasks.job.label: 'occupation' is not a user or item"):
    training.prepare(config)


@pytest.mark.parametrize("kind", ["gru", "lstm", "attention"])
def test_a_sequence_model_trains_evaluates_and_reloads_from_config(tmp_path, tiny_data, kind):
  config = _files_config(tmp_path, tiny_data, split={"protocol": "temporal"},
                         model={"embedding_dim": 8, "sequence": {"type": kind, "length": 4}})
  prepared = training.prepare(config)
  assert all("history" in part for part in prepared.split)
  model = training.fit(config, prepared, verbose=0)
  metrics = evaluation.evaluate_model(model, prepared.data, prepared.split, ks=[10])
  run_dir = runs.save_run(tmp_path / "run", config, prepared, model)
  _, reloaded = runs.load_run(run_dir)
  batch = reloaded.encoder(prepared.data.examples(prepared.split.test))
  np.testing.assert_allclose(reloaded.query_tower(batch).numpy(),
                             model.query_tower(batch).numpy(), atol=1e-5)
  again = evaluation.evaluate_model(reloaded, prepared.data, prepared.split, ks=[10])
  assert list(again) == list(metrics) and np.isfinite(list(metrics.values())).all()
  np.testing.assert_allclose(list(again.values()), list(metrics.values()), atol=1e-6)


def test_a_sequence_model_needs_a_vocabulary_with_history(tiny_data):
  from tfmtl import FeatureVocabulary, MultiTaskModel
  from tfmtl.config import ModelConfig, SequenceConfig
  with pytest.raises(ValueError, match=r"reads the history feature \(model.sequence.type 'gru'"):
    MultiTaskModel(FeatureVocabulary.build(tiny_data, tiny_data.interactions),
                   tiny_data.items, ModelConfig(sequence=SequenceConfig(type="gru")))


@pytest.fixture(scope="module")
def plain_step(tmp_path_factory, tiny_prepared):
  """(config, model): the tiny set trained 2 epochs, one step a call."""
  config = ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=2", "train.batch_size=64",
      "train.steps_per_execution=1", f"train.run_dir={tmp_path_factory.mktemp('plain') / 'run'}"])
  return config, training.fit(config, tiny_prepared, verbose=0)


@pytest.mark.parametrize("options, steps_per_call", [
    (["train.steps_per_execution=null"], 32),  # unset: 32 on one device
    (["train.steps_per_execution=5"], 5),
    (["train.jit_compile=true"], 1)])
def test_compile_options_train_as_the_plain_step(tmp_path, tiny_prepared, plain_step, options,
                                                 steps_per_call, monkeypatch):
  base, plain = plain_step
  traces, step = [], MultiTaskModel._train_step
  def traced_step(self, inputs):  # runs in Python only when TensorFlow traces it
    traces.append(1)
    return step(self, inputs)
  monkeypatch.setattr(MultiTaskModel, "_train_step", traced_step)
  calls = []
  count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: calls.append(1))
  compiled = training.fit(base.with_overrides([*options, f"train.run_dir={tmp_path / 'run'}"]),
                          tiny_prepared, verbose=0, callbacks=[count])
  steps_per_epoch = -(-len(tiny_prepared.split.train) // 64)
  assert len(calls) == 2 * -(-steps_per_epoch // steps_per_call)  # once per call
  assert compiled.jit_compile == ("jit_compile" in options[0])
  for name, losses in plain.history.history.items():
    assert compiled.history.history[name] == pytest.approx(losses, rel=1e-3), name
  for left, right in zip(plain.trainable_weights, compiled.trainable_weights):
    np.testing.assert_allclose(left.numpy(), right.numpy(), atol=1e-3)
  # The optimizer's variables existed before the first step: one trace.
  assert compiled.train_function.experimental_get_tracing_count() == 1
  # Several steps a call are an autograph loop, which traces its body twice
  # (first to learn its result's structure): the step is traced once.
  assert len(traces) == 1


def test_tfrecord_input_on_one_device_trains_as_memory_input(tmp_path, tiny_prepared):
  base = ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=3", "train.batch_size=64",
      f"train.run_dir={tmp_path / 'run'}"])
  streamed = training.fit(base.with_overrides(["train.input=tfrecord"]), tiny_prepared,
                          verbose=0)
  in_memory = training.fit(base, tiny_prepared, verbose=0)
  for name in ("retrieval_loss", "rating_loss", "like_loss"):  # batches in another order
    assert streamed.history.history[name][-1] == pytest.approx(
        in_memory.history.history[name][-1], rel=0.1), name
  assert not (tmp_path / "run.input").exists()  # removed once training completes


def test_metrics_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
  path = runs.save_metrics(tmp_path, {"recall@10": 0.25})

  def crash_midway(self, text, *args, **kwargs):
    with open(self, "w") as file:
      file.write(text[:len(text) // 2])
    raise OSError("disk full")

  monkeypatch.setattr(Path, "write_text", crash_midway)
  with pytest.raises(OSError, match="disk full"):
    runs.save_metrics(tmp_path, {"recall@10": 0.5})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"recall@10": 0.25}  # the last whole one
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_each_epoch_validates_at_most_validation_users(tmp_path, tiny_data, monkeypatch):
  interactions = tiny_data.interactions
  validation = interactions.iloc[::4]
  prepared = training.Prepared(
      tiny_data, Split(interactions.drop(validation.index), validation, interactions.iloc[:0]),
      tfmtl.FeatureVocabulary.build(tiny_data, interactions))
  scored = []

  def record(model, data, split, *args, **kwargs):
    scored.append(split.test["user_id"].nunique())
    return {}

  monkeypatch.setattr(evaluation, "evaluate_model", record)
  config = ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=2", "train.batch_size=64",
      "train.validation_users=3", f"train.run_dir={tmp_path / 'run'}"])
  training.fit(config, prepared, verbose=0)
  assert validation["user_id"].nunique() > 3 and scored == [3, 3]


@pytest.mark.parametrize("epochs, patience, stopped", [(8, 2, 4), (3, 5, None)])
def test_early_stopping_ends_with_the_best_epochs_weights(tiny_config_file, monkeypatch, caplog,
                                                          epochs, patience, stopped):
  """The validation metric is made to peak in epoch 2; training stops after
  `patience` validations without improvement, or runs its epochs, and
  either way ends with epoch 2's weights and says so."""
  scores, weights = iter([0.1, 0.3, 0.2, 0.25, 0.1, 0.1, 0.1, 0.1]), []

  def peaking_early(model, *args, **kwargs):
    weights.append(model.get_weights())
    return {"recall@10": next(scores)}
  monkeypatch.setattr(evaluation, "evaluate_model", peaking_early)
  caplog.set_level(logging.INFO, logger="tfmtl")
  config = ExperimentConfig.from_file(tiny_config_file(train={
      "epochs": epochs, "early_stopping": {"metric": "recall@10", "patience": patience}}))
  model = training.fit(config, training.prepare(config), verbose=0)
  assert len(model.history.epoch) == (stopped or epochs)
  for kept, best in zip(model.get_weights(), weights[1], strict=True):
    np.testing.assert_array_equal(kept, best)
  assert not np.array_equal(weights[1][0], weights[-1][0])  # later epochs moved them
  assert ("train.early_stopping: kept epoch 2 (val_recall@10 0.3000)"
          + (f"; stopped after epoch {stopped}" if stopped else "")) in caplog.text


def test_a_split_made_beforehand_is_read_as_given(tmp_path, tiny_data):
  """`split.protocol: given`: the train, validation and test files are the
  split; vocabularies come from the train file; errors name the part's file."""
  from tfmtl.data import DataError, per_user_split
  parts = per_user_split(tiny_data.interactions, (0.7, 0.15, 0.15), seed=3)
  for name, part in zip(("train", "validation", "test"), parts):
    part.to_csv(tmp_path / f"{name}.csv", index=False)
  config = _files_config(tmp_path, tiny_data).with_overrides(
      ["split.protocol=given", "data.interactions=null",
       *(f"data.{name}={tmp_path / name}.csv" for name in ("train", "validation", "test"))])
  prepared = training.prepare(config)
  for got, written in zip(prepared.split, parts):
    pd.testing.assert_frame_equal(got.reset_index(drop=True)[written.columns],
                                  written.reset_index(drop=True), check_dtype=False)
  assert set(prepared.vocabulary.user_ids) == set(parts.train["user_id"])
  test = parts.test.copy().astype({"rating": object})
  test.loc[test.index[2], "rating"] = "five"
  test.to_csv(tmp_path / "test.csv", index=False)
  with pytest.raises(DataError, match=r"^line 4 of \S*test\.csv: column 'rating' has a "
                                      r"non-numeric value 'five'"):
    training.prepare(config)
  with pytest.raises(ConfigError, match="split.protocol: given needs data.train and data.test"):
    ExperimentConfig().with_overrides(["split.protocol=given"])
