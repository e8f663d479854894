"""`model.tpu_embedding`: both towers' tables in one TFRS `TPUEmbedding`.

No TPU here: these run the layer's off-TPU path (its tables ordinary
variables), which must be a drop-in for the towers' own tables: the same
weights give the same outputs and the same training, and the model
saves, reloads, exports and falls back from `train.strategy: tpu`.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfmtl import runs, training
from tfmtl.model import build_model
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.data import make_dataset
from tfmtl.distribute import on_tpu
from tfmtl.layers import EmbeddingTables
from tfmtl.serving import export_model
from tfmtl.transfer import component_of, load_pretrained, variable_path

TINY = {"model": {"embedding_dim": 16, "tower_layers": [32]},
        "train": {"epochs": 2, "batch_size": 64, "validate_every": 0, "log_dir": ""}}


def _config(tpu_embedding: bool, **train) -> ExperimentConfig:
  return ExperimentConfig.from_dict({
      "model": {**TINY["model"], "tpu_embedding": tpu_embedding},
      "train": {**TINY["train"], **train}})


def _built(config, prepared):
  model = build_model(config, prepared.vocabulary, prepared.data.items)
  model.create_variables()
  return model


def _plain_path(path: str, shared) -> str:
  """The path of `shared`'s table variable in a model whose towers own their tables."""
  if not path.startswith("embedding_tables/"):
    return path
  table = path.split("/")[1]
  query_tables = {f"{name}_embedding" for name in shared.query_tower.looked_up}
  tower = "query_tower" if table in query_tables else "candidate_tower"
  return f"{tower}/{table}/embeddings"


@pytest.fixture
def twins(tiny_prepared):
  """A model with shared tables and one with its towers' own tables, with
  the same weights."""
  plain, shared = (_built(_config(flag), tiny_prepared) for flag in (False, True))
  values = {variable_path(v): v.numpy() for v in plain.trainable_variables}
  assert len(values) == len(shared.trainable_variables)
  for variable in shared.trainable_variables:
    variable.assign(values[_plain_path(variable_path(variable), shared)])
  return plain, shared


def test_the_tables_hold_each_id_and_categorical_feature_once(twins):
  _, shared = twins
  tables = {variable_path(v): tuple(v.shape) for v in shared.embedding_tables.variables}
  vocabulary = shared.vocabulary
  assert tables == {
      "embedding_tables/user_id_embedding": (vocabulary.size("user_id"), 32),
      "embedding_tables/item_id_embedding": (vocabulary.size("item_id"), 32),
      "embedding_tables/taste_embedding": (vocabulary.size("taste"), 8),
      "embedding_tables/age_embedding": (vocabulary.size("age"), 8),
      "embedding_tables/year_embedding": (vocabulary.size("year"), 8)}
  # the multi-hot genres stay a Dense layer in the candidate tower
  assert list(shared.candidate_tower.feature_embeddings) == ["genres"]
  assert shared.query_tower.id_embedding is None
  assert all(component_of(path) == "embeddings" for path in tables)


def test_a_lookup_gives_the_tables_rows_and_a_subset_works_off_tpu():
  tables = EmbeddingTables({"user_id": (5, 3), "item_id": (4, 3)})
  ids = {"user_id": tf.constant([4, 0, 4]), "item_id": tf.constant([1, 2, 3])}
  rows = tables(ids)
  by_name = {variable_path(v).split("/")[-1]: v.numpy() for v in tables.variables}
  np.testing.assert_array_equal(rows["user_id"], by_name["user_id_embedding"][[4, 0, 4]])
  np.testing.assert_array_equal(rows["item_id"], by_name["item_id_embedding"][[1, 2, 3]])
  only_items = tables({"item_id": tf.constant([3])})
  assert list(only_items) == ["item_id"]
  np.testing.assert_array_equal(only_items["item_id"], by_name["item_id_embedding"][[3]])


def test_same_weights_give_the_same_outputs_and_the_same_training(twins, tiny_prepared):
  plain, shared = twins
  data = tiny_prepared.data
  batches = make_dataset(data, data.interactions, plain.encoder, 64)
  batch = next(iter(batches))
  for name, value in plain(batch).items():
    np.testing.assert_allclose(shared(batch)[name], value, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(shared.catalogue_embeddings(), plain.catalogue_embeddings(),
                             atol=1e-6)
  histories = [model.fit(batches, epochs=2, verbose=0).history for model in (plain, shared)]
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    np.testing.assert_allclose(histories[1][name], histories[0][name], rtol=1e-4, err_msg=name)
  trained = {variable_path(v): v.numpy() for v in plain.trainable_variables}
  for variable in shared.trainable_variables:
    path = variable_path(variable)
    np.testing.assert_allclose(variable.numpy(), trained[_plain_path(path, shared)],
                               atol=1e-4, err_msg=path)


def test_a_run_with_shared_tables_saves_reloads_and_exports(tiny_prepared, tmp_path,
                                                            fresh_process):
  config = _config(True)
  model = training.fit(config, tiny_prepared, verbose=0)
  run_dir = runs.save_run(tmp_path / "run", config, tiny_prepared, model)
  _, reloaded = runs.load_run(run_dir)
  copy = training.host_copy(config, tiny_prepared, model)
  np.testing.assert_allclose(reloaded.catalogue_embeddings(), model.catalogue_embeddings(),
                             atol=1e-6)
  np.testing.assert_allclose(copy.catalogue_embeddings(), model.catalogue_embeddings(),
                             atol=1e-6)
  assert copy.history is model.history

  path = export_model(reloaded, tmp_path / "saved_models", "tiny", top_k=3)
  (output,) = fresh_process(
      f"import json, tensorflow as tf\n"
      f"m = tf.saved_model.load({str(path)!r})\n"
      f"out = m.signatures['query_embedding'](user_id=tf.constant(['u1']),"
      f" taste=tf.constant(['t1']), age=tf.constant([25.0]))\n"
      f"print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}))").values()
  raw = {"user_id": tf.constant(["u1"]), "taste": tf.constant(["t1"]),
         "age": tf.constant([25.0])}
  np.testing.assert_allclose(output, model.query_tower(model.encoder(raw)), atol=1e-5)


def test_the_tpu_strategy_without_a_tpu_trains_the_shared_tables_on_the_host(tiny_prepared):
  model = training.fit(_config(True, strategy="tpu", epochs=2), tiny_prepared, verbose=0)
  assert not on_tpu(model.distribute_strategy)  # the fallback (its warning: test_distribute)
  assert isinstance(model.embedding_tables, EmbeddingTables)
  tables = [v for v in model.trainable_variables if "embedding_tables/" in v.name]
  for table in ("user_id_embedding", "item_id_embedding"):
    assert any(f"/{table}" in v.name for v in tables), table
  assert max(float(np.abs(v.numpy()).max()) for v in tables) > 0.05  # left the initial range
  losses = model.history.history["retrieval_loss"]
  assert losses[1] < losses[0]


def test_fine_tuning_remaps_the_shared_id_tables(tiny_prepared):
  source = _built(_config(True), tiny_prepared)
  target = _built(_config(True), tiny_prepared)
  loaded = load_pretrained(target, source, ["embeddings"])
  assert "embedding_tables/user_id_embedding" in loaded
  np.testing.assert_array_equal(
      target.embedding_tables.embedding_tables[
          target.embedding_tables.feature_configs["user_id"].table].numpy(),
      source.embedding_tables.embedding_tables[
          source.embedding_tables.feature_configs["user_id"].table].numpy())


@pytest.mark.parametrize("overrides, named", [
    (["model.l2=0.01"], "tpu_embedding"),
    (["model.id_embedding_blocks={item_id: [{share: 1.0, dim: 4}]}"], "tpu_embedding"),
    (["train.optimizer=rmsprop"], "train.optimizer")])
def test_what_the_tpu_embedding_engine_cannot_run_is_a_config_error(overrides, named):
  with pytest.raises(ConfigError, match=named):
    ExperimentConfig().with_overrides(["model.tpu_embedding=true", *overrides])


def test_on_a_tpu_creating_the_variables_builds_the_tables_without_a_lookup(
    tiny_prepared, monkeypatch):
  """Off a step a TPU's engine cannot look rows up: the call that creates
  the variables must build the tables for the step's batch and not call them."""
  import tfmtl.model
  config = _config(True)
  reference = _built(config, tiny_prepared)
  model = build_model(config, tiny_prepared.vocabulary, tiny_prepared.data.items)
  built_for, lookups = [], []
  monkeypatch.setattr(tfmtl.model, "on_tpu", lambda: True)
  monkeypatch.setattr(model.embedding_tables, "build", lambda shapes: (
      built_for.append(shapes), EmbeddingTables.build(model.embedding_tables, shapes)))
  monkeypatch.setattr(EmbeddingTables, "call", lambda self, *args, **kwargs: lookups.append(1))
  model.create_variables(per_replica_batch=32)
  assert lookups == []
  assert built_for == [{name: tf.TensorShape([32]) for name in model.embedding_tables.features}]
  def towers_and_heads(m):
    tables = {id(v) for v in m.embedding_tables.variables}
    return sorted(variable_path(v) for v in m.trainable_variables if id(v) not in tables)
  assert towers_and_heads(model) == towers_and_heads(reference)
  assert ([tuple(v.shape) for v in model.embedding_tables.variables]
          == [tuple(v.shape) for v in reference.embedding_tables.variables])


@pytest.mark.parametrize("overrides, named", [
    (["train.precision=mixed_float16"], "train.precision"),
    (["transfer.pretrained=runs/source", "transfer.freeze_epochs={embeddings: 2}"], "transfer"),
    (["transfer.pretrained=runs/source", "transfer.l2sp=0.01"], "transfer")])
def test_on_a_tpu_what_the_engine_would_get_wrong_is_a_config_error(
    tiny_prepared, monkeypatch, overrides, named):
  monkeypatch.setattr(training, "on_tpu", lambda strategy=None: True)
  with pytest.raises(ConfigError, match=named):
    training.fit(_config(True).with_overrides(overrides), tiny_prepared, verbose=0)
