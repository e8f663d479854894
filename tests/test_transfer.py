"""Fine-tuning: pretrained weights with remapped vocabularies, freezing,
learning-rate scales and L2-SP."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl import runs, training
from tfmtl.config import EmbeddingBlock, ExperimentConfig, ModelConfig, TransferConfig
from tfmtl.data import Split, make_dataset
from tfmtl.data.sources import mix_source
from tfmtl.features import FeatureVocabulary
from tfmtl.transfer import FineTuning, component_of, fine_tune_from, load_pretrained


def _model(data, interactions, **model_args):
  vocabulary = FeatureVocabulary.build(data, interactions)
  model = tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(embedding_dim=8, **model_args))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.create_variables()
  return model


def _fit(model, data, interactions, epochs=1):
  model.fit(make_dataset(data, interactions, model.encoder, 64, shuffle=True, seed=0),
            epochs=epochs, verbose=0)


def _table(model, name):
  return next(v for v in model.trainable_variables if f"/{name}/" in v.name).numpy()


def _rows(model, name, ids):
  vocabulary = {"user_id_embedding": model.vocabulary.user_ids,
                "item_id_embedding": model.vocabulary.item_ids}[name]
  return _table(model, name)[[vocabulary.index(i) + 1 for i in ids]]


@pytest.fixture(scope="module")
def source(tiny_data):
  """Pretrained on the first 40 users' interactions."""
  interactions = tiny_data.interactions
  source_part = interactions[interactions["user_id"].str[1:].astype(int) < 40]
  model = _model(tiny_data, source_part)
  _fit(model, tiny_data, source_part, epochs=2)
  return model


def _target_part(tiny_data):
  interactions = tiny_data.interactions
  return interactions[interactions["user_id"].str[1:].astype(int) >= 20]


def test_components_cover_every_layer_kind():
  assert component_of("query_tower/user_id_embedding/embeddings") == "embeddings"
  assert component_of("candidate_tower/content_adapter/kernel") == "embeddings"
  assert component_of("query_tower/history/item_embedding/embeddings") == "embeddings"
  assert component_of("query_tower/history/item_vector_adapter/kernel") == "embeddings"
  assert component_of("query_tower/history/gru/gru_cell/kernel") == "towers"
  assert component_of("query_tower/history/lstm/lstm_cell/kernel") == "towers"
  assert component_of("candidate_tower/hidden_0/kernel") == "towers"
  assert component_of("ranking/mmoe/expert_0_0/kernel") == "experts"
  assert component_of("ranking/rating_head/logit/kernel") == "heads"
  assert component_of("occupation_head/logit/kernel") == "heads"


def test_every_trainable_variable_of_a_model_with_every_head_kind_has_a_component(tiny_data):
  from tfmtl.config import TaskConfig
  from tfmtl.transfer import variable_path
  vocabulary = FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, tasks={
      "retrieval": TaskConfig(type="retrieval"),
      "rating": TaskConfig(type="regression", label="rating"),
      "genre": TaskConfig(type="classification", label="genres")})
  model.create_variables()
  paths = [variable_path(v) for v in model.trainable_variables]
  assert len(set(paths)) == len(paths)  # no two variables share a path
  assert {path: component_of(path) for path in paths if component_of(path) is None} == {}
  assert {component_of(path) for path in paths if "genre_head" in path} == {"heads"}


def test_remapping_keeps_shared_rows_bit_identical_and_new_rows_fresh(tiny_data, source):
  target_part = _target_part(tiny_data)
  target = _model(tiny_data, target_part)
  fresh = _table(target, "user_id_embedding").copy()
  load_pretrained(target, source)
  shared = [f"u{u}" for u in range(20, 40)]
  new = [f"u{u}" for u in range(40, 60)]
  np.testing.assert_array_equal(_rows(target, "user_id_embedding", shared),
                                _rows(source, "user_id_embedding", shared))
  new_rows = [target.vocabulary.user_ids.index(u) + 1 for u in new]
  np.testing.assert_array_equal(_table(target, "user_id_embedding")[new_rows], fresh[new_rows])
  items = sorted(set(target.vocabulary.item_ids) & set(source.vocabulary.item_ids))
  np.testing.assert_array_equal(_rows(target, "item_id_embedding", items),
                                _rows(source, "item_id_embedding", items))
  np.testing.assert_array_equal(_table(target, "hidden_0"), _table(source, "hidden_0"))


def test_a_shape_mismatch_names_the_variable(tiny_data, source):
  target = _model(tiny_data, _target_part(tiny_data), tower_layers=[32])
  with pytest.raises(ValueError, match=r"'query_tower/hidden_0/kernel' has shape \(\d+, 32\)"):
    load_pretrained(target, source, ["towers"])
  load_pretrained(target, source, ["embeddings"])  # what does fit still loads


def test_a_variable_missing_from_the_pretrained_model_is_named(tiny_data, source):
  from tfmtl.config import MultiTaskConfig
  target = _model(tiny_data, _target_part(tiny_data),
                  multitask=MultiTaskConfig(type="shared_bottom", layers=[8]))
  with pytest.raises(ValueError, match=r"'ranking/shared_bottom/.*' \(experts\) is not in"):
    load_pretrained(target, source, ["experts"])


def test_mixed_dimension_blocks_keep_the_ids_that_stay_in_their_block(tiny_data):
  blocks = {"user_id": [EmbeddingBlock(0.3, 4), EmbeddingBlock(0.7, 2)]}
  interactions = tiny_data.interactions
  source_part = interactions[interactions["user_id"].str[1:].astype(int) < 40]
  source = _model(tiny_data, source_part, id_embedding_blocks=blocks)
  _fit(source, tiny_data, source_part)
  target = _model(tiny_data, _target_part(tiny_data), id_embedding_blocks=blocks)
  assert component_of("query_tower/user_id_embedding/block_0_embeddings") == "embeddings"
  fresh = [table.numpy() for table in target.query_tower.id_embedding.tables]
  load_pretrained(target, source)
  source_rows, target_rows = (_block_rows(m) for m in (source, target))
  source_tables, target_tables = ([t.numpy() for t in m.query_tower.id_embedding.tables]
                                  for m in (source, target))
  kept = moved = 0
  for user, (block, row) in target_rows.items():
    if source_rows.get(user, (None,))[0] == block:
      kept += 1
      np.testing.assert_array_equal(target_tables[block][row],
                                    source_tables[block][source_rows[user][1]])
    else:  # new, or in another block there
      moved += user in source_rows
      np.testing.assert_array_equal(target_tables[block][row], fresh[block][row])
  assert kept > 0 and moved > 0


def _block_rows(model):
  """User id -> (block, row in the block's table) of a mixed user embedding."""
  bounds = model.query_tower.id_embedding.bounds
  return {user: next((block, index - start) for block, (start, end)
                     in enumerate(zip(bounds, bounds[1:])) if start <= index < end)
          for index, user in enumerate(["<oov>", *model.vocabulary.user_ids])}


def test_frozen_components_do_not_move_and_unfreeze_on_schedule(tiny_data, source):
  target_part = _target_part(tiny_data)
  target = _model(tiny_data, target_part)
  target.fine_tuning = FineTuning(load_pretrained(target, source),
                                  freeze_epochs={"embeddings": 1})
  before = {v.name: v.numpy() for v in target.trainable_variables}
  _fit(target, tiny_data, target_part, epochs=1)
  for variable in target.trainable_variables:
    moved = not np.array_equal(variable.numpy(), before[variable.name])
    assert moved == (component_of(variable.name.split("/", 1)[1]) != "embeddings"), variable.name
  frozen = _table(target, "user_id_embedding")
  target.fit(make_dataset(tiny_data, target_part, target.encoder, 64), initial_epoch=1,
             epochs=2, verbose=0)
  assert not np.array_equal(_table(target, "user_id_embedding"), frozen)


def test_the_learning_rate_scale_scales_the_pretrained_updates(tiny_data, source):
  target_part = _target_part(tiny_data)
  batch = next(iter(make_dataset(tiny_data, target_part, _model(tiny_data, target_part).encoder,
                                 64)))
  steps = {}
  for scale in (1.0, 0.25):
    keras.utils.set_random_seed(0)  # the same fresh rows for the new users
    target = _model(tiny_data, target_part)
    target.compile(optimizer=keras.optimizers.SGD(0.1))
    target.fine_tuning = FineTuning(load_pretrained(target, source),  # the same start
                                    learning_rate_scale=scale)
    start = _table(target, "projection")
    target.train_step(batch)
    steps[scale] = _table(target, "projection") - start
  np.testing.assert_allclose(steps[0.25], 0.25 * steps[1.0], rtol=1e-4, atol=1e-7)
  assert np.abs(steps[1.0]).max() > 0


def test_the_l2sp_gradient_points_back_to_the_pretrained_weights(tiny_data, source):
  target = _model(tiny_data, _target_part(tiny_data))
  fine_tuning = FineTuning(load_pretrained(target, source), l2sp=0.5)
  for variable in target.trainable_variables:
    variable.assign_add(tf.random.normal(variable.shape, seed=1))
  with tf.GradientTape() as tape:
    penalty = fine_tuning.penalty(target.trainable_variables)
  gradients = tape.gradient(penalty, target.trainable_variables)
  assert float(penalty) > 0
  for variable, gradient in zip(target.trainable_variables, gradients):
    path = variable.name.split("/", 1)[1].split(":")[0]
    np.testing.assert_allclose(tf.convert_to_tensor(gradient).numpy(),
                               0.5 * (variable.numpy() - fine_tuning.pretrained[path].numpy()),
                               rtol=1e-5, atol=1e-6)


def test_a_config_fine_tunes_from_a_saved_run(tiny_data, source, tmp_path):
  empty = tiny_data.interactions.iloc[:0]
  source_run = runs.save_run(
      tmp_path / "source", ExperimentConfig().with_overrides(["model.embedding_dim=8"]),
      training.Prepared(tiny_data, Split(empty, empty, empty), source.vocabulary), source)
  target_part = _target_part(tiny_data)
  config = ExperimentConfig().with_overrides([
      "model.embedding_dim=8", "train.epochs=1", "train.batch_size=64",
      f"transfer.pretrained={source_run}", "transfer.freeze_epochs={embeddings: -1}",
      "transfer.l2sp=0.01"])
  prepared = training.Prepared(tiny_data, Split(target_part, empty, empty),
                               FeatureVocabulary.build(tiny_data, target_part))
  model = training.fit(config, prepared, verbose=0)
  shared = [f"u{u}" for u in range(20, 40)]
  np.testing.assert_array_equal(_rows(model, "user_id_embedding", shared),
                                _rows(source, "user_id_embedding", shared))
  assert model.fine_tuning.l2sp == 0.01


def test_a_run_that_predicted_a_feature_pretrains_a_model_that_reads_it(tiny_data, tmp_path,
                                                                       caplog):
  """Classification -> recommendation: the pretrained run's `taste` task
  hid `taste` from its query tower; the fine-tuned model reads it. The
  parts both towers read keep their pretrained kernel rows (frozen here);
  `taste`'s rows and embedding start fresh, outside L2-SP's pull."""
  empty = tiny_data.interactions.iloc[:0]
  prepared = training.Prepared(tiny_data, Split(tiny_data.interactions, empty, empty),
                               FeatureVocabulary.build(tiny_data, tiny_data.interactions))
  small = ["model.embedding_dim=8", "train.epochs=1", "train.batch_size=64"]
  source_config = ExperimentConfig().with_overrides(
      [*small, "tasks.taste={type: classification, label: taste}"])
  source = training.fit(source_config, prepared, verbose=0)
  assert dict(source.query_tower.input_widths).keys() == {"user_id", "age"}
  source_run = runs.save_run(tmp_path / "source", source_config, prepared, source)
  with caplog.at_level("INFO", logger="tfmtl"):
    model = training.fit(ExperimentConfig().with_overrides(
        [*small, f"transfer.pretrained={source_run}", "transfer.freeze_epochs={towers: -1}"]),
        prepared, verbose=0)
  assert "query_tower/taste_embedding/embeddings starts fresh" in caplog.text
  widths = dict(model.query_tower.input_widths)
  assert list(widths) == ["user_id", "taste", "age"]
  kernel, pretrained = _table(model, "hidden_0"), _table(source, "hidden_0")
  user_id, taste = slice(0, widths["user_id"]), slice(widths["user_id"],
                                                      widths["user_id"] + widths["taste"])
  np.testing.assert_array_equal(kernel[user_id], pretrained[user_id])
  np.testing.assert_array_equal(kernel[taste.stop:], pretrained[widths["user_id"]:])  # age
  assert np.isfinite(model.history.history["loss"]).all()
  assert "query_tower/taste_embedding/embeddings" not in model.fine_tuning.pretrained


def test_a_history_without_text_pretrains_one_whose_history_reads_it(tiny_data, caplog):
  """`model.sequence.content` in the target only: the history's item
  embeddings load, its content adapter starts fresh."""
  from tfmtl.config import SequenceConfig
  from tfmtl.content import ItemContentTable, with_content
  from tfmtl.data.history import add_history
  items = tiny_data.items["item_id"].tolist()
  data = with_content(tiny_data, ItemContentTable(
      items, np.ones([len(items), 4], np.float32), "test", "{genres}", 8))
  empty = data.interactions.iloc[:0]
  train = add_history(Split(data.interactions, empty, empty), length=3).train
  vocabulary = FeatureVocabulary.build(data, train, history_length=3)
  source, target = (tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(
      embedding_dim=8, sequence=SequenceConfig(type="mean", length=3, content=content)))
                    for content in (False, True))
  source.create_variables()
  target.create_variables()
  fresh = _table(target, "item_vector_adapter").copy()
  with caplog.at_level("INFO", logger="tfmtl"):
    load_pretrained(target, source)
  assert "query_tower/history/item_vector_adapter/kernel starts fresh" in caplog.text
  np.testing.assert_array_equal(_table(target, "item_vector_adapter"), fresh)
  np.testing.assert_array_equal(_table(target, "item_embedding"), _table(source, "item_embedding"))


def test_fine_tune_from_rejects_an_unknown_component(tiny_data, source):
  target = _model(tiny_data, _target_part(tiny_data))
  with pytest.raises(ValueError, match="unknown component"):
    fine_tune_from(target, source, TransferConfig(freeze_epochs={"everything": 1}))


# Sample-based transfer: source examples mixed into training with a weight.

def _batch(data, interactions, model, weight=None):
  if weight is not None:
    interactions = interactions.assign(sample_weight=weight)
  return next(iter(make_dataset(data, interactions, model.encoder, 256)))


def test_sample_weights_scale_every_task_loss(tiny_data):
  model = _model(tiny_data, tiny_data.interactions)
  rows = tiny_data.interactions.iloc[:256]
  unweighted = float(model.compute_loss(_batch(tiny_data, rows, model)))
  assert float(model.compute_loss(_batch(tiny_data, rows, model, 1.0))) == pytest.approx(
      unweighted, rel=1e-6)
  assert float(model.compute_loss(_batch(tiny_data, rows, model, 0.25))) == pytest.approx(
      0.25 * unweighted, rel=1e-6)


def test_a_zero_weight_example_teaches_its_user_nothing(tiny_data):
  model = _model(tiny_data, tiny_data.interactions)
  rows = tiny_data.interactions.iloc[:256]
  batch = _batch(tiny_data, rows, model, np.where(rows["user_id"] == "u0", 0.0, 1.0))
  table = next(v for v in model.trainable_variables if "user_id_embedding" in v.name)
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch)
  gradient = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
  index = {u: model.vocabulary.user_ids.index(u) + 1 for u in ("u0", "u1")}
  np.testing.assert_array_equal(gradient[index["u0"]], 0.0)
  assert np.abs(gradient[index["u1"]]).sum() > 0


def _domain_files(tiny_frames, tmp_path):
  """Target: items i0-i19; source: items i20-i39 and 20 more users."""
  make_frames, user_features = tiny_frames
  interactions, users, items = make_frames(num_users=80)
  item_number = interactions["item_id"].str[1:].astype(int)
  paths = {}
  for name, frame in {"target": interactions[(item_number < 20) & (
                          interactions["user_id"].str[1:].astype(int) < 60)],
                      "source": interactions[item_number >= 20],
                      "users": users, "items": items.iloc[:20],
                      "source_items": items.iloc[20:]}.items():
    paths[name] = tmp_path / f"{name}.csv"
    frame.to_csv(paths[name], index=False)
  return paths, {"taste": "categorical"}


def _source_config(paths, user_features, *overrides):
  data = {"source": "files", "interactions": str(paths["target"]),
          "users": str(paths["users"]), "items": str(paths["items"]),
          "user_features": user_features}
  source = {"source": "files", "interactions": str(paths["source"]),
            "users": str(paths["users"]), "items": str(paths["source_items"])}
  return ExperimentConfig.from_dict({"data": data, "transfer": {"source": source}}
                                    ).with_overrides(["model.embedding_dim=8", *overrides])


def test_a_source_domain_joins_training_at_its_weight(tiny_frames, tmp_path):
  paths, user_features = _domain_files(tiny_frames, tmp_path)
  config = _source_config(paths, user_features, "transfer.source_weight=0.25",
                          "train.epochs=2", "train.batch_size=64")
  prepared = training.prepare(config)
  data, rows = prepared.training_examples()
  source_rows = pd.read_csv(paths["source"])
  assert len(rows) == len(prepared.split.train) + len(source_rows)
  assert rows["sample_weight"].value_counts().to_dict() == {
      1.0: len(prepared.split.train), 0.25: len(source_rows)}
  # The vocabulary knows both domains; the catalogue and the evaluation are the target's.
  assert set(source_rows["item_id"]) <= set(prepared.vocabulary.item_ids)
  assert {"u70", "u79"} <= set(prepared.vocabulary.user_ids)
  assert set(prepared.data.items["item_id"]) == {f"i{i}" for i in range(20)}
  model = training.fit(config, prepared, verbose=0)
  assert set(model.catalogue_item_ids) == {f"i{i}" for i in range(20)}
  history = model.history.history["loss"]
  assert history[-1] < history[0]
  metrics = tfmtl.evaluation.evaluate_model(model, prepared.data, prepared.split, [5])
  assert 0 < metrics["recall@5"] <= 1
  _, loaded = runs.load_run(runs.save_run(tmp_path / "run", config, prepared, model))
  np.testing.assert_allclose(loaded.catalogue_embeddings(), model.catalogue_embeddings())


def test_a_source_without_the_target_labels_is_named(tiny_frames, tmp_path):
  paths, user_features = _domain_files(tiny_frames, tmp_path)
  pd.read_csv(paths["source"]).drop(columns="rating").to_csv(paths["source"], index=False)
  with pytest.raises(tfmtl.data.DataError, match=r"transfer.source: .*\['rating'\]"):
    training.prepare(_source_config(paths, user_features))


def test_a_source_without_the_target_features_is_named(tiny_frames, tmp_path):
  paths, user_features = _domain_files(tiny_frames, tmp_path)
  pd.read_csv(paths["users"]).drop(columns="taste").to_csv(tmp_path / "bare.csv", index=False)
  config = _source_config(paths, user_features,
                          f"transfer.source.users={tmp_path / 'bare.csv'}")
  with pytest.raises(tfmtl.data.DataError, match=r"transfer.source: .*bare.csv.*taste"):
    training.prepare(config)


def test_bad_sample_weights_are_refused(tiny_frames, tmp_path):
  paths, user_features = _domain_files(tiny_frames, tmp_path)
  frame = pd.read_csv(paths["target"]).assign(sample_weight=-1.0)
  frame.to_csv(paths["target"], index=False)
  with pytest.raises(tfmtl.data.DataError, match="target.csv.*sample_weight.*negative"):
    training.prepare(_source_config(paths, user_features))
  with pytest.raises(tfmtl.config.ConfigError, match="transfer.source_weight: must be positive"):
    _source_config(paths, user_features, "transfer.source_weight=0")


@pytest.mark.parametrize("sizes", [(10, 290), (200, 20)])
def test_balanced_domains_weigh_as_configured_whatever_their_sizes(sizes):
  """`balance: domains`: the mean weighted loss over all rows (a batch's
  estimate) is the target's mean loss plus source_weight times the
  source's, for any numbers of rows; `rows` lets the larger domain win."""
  rng = np.random.default_rng(0)
  def domain(prefix, rows, weight):
    return pd.DataFrame({"user_id": [f"{prefix}u{i}" for i in range(rows)],
                         "item_id": [f"{prefix}i{i}" for i in range(rows)],
                         "rating": 3.0, "sample_weight": weight})
  target, source = domain("t", sizes[0], 1.0), domain("s", sizes[1], 0.5)
  target_data = tfmtl.data.InteractionData.from_frames(target.drop(columns="sample_weight"))
  source_data = tfmtl.data.InteractionData.from_frames(source)
  losses = {"t": rng.random(sizes[0]), "s": rng.random(sizes[1])}
  for balance, expected in (("domains", losses["t"].mean() + 0.5 * losses["s"].mean()),
                            ("rows", (losses["t"].sum() + 0.5 * losses["s"].sum()) / sum(sizes))):
    _, rows = mix_source(target_data, target_data.interactions, source_data, balance)
    per_row = np.concatenate([losses["t"], losses["s"]])
    assert np.mean(rows["sample_weight"] * per_row) == pytest.approx(expected), balance


def test_the_config_balances_the_domains_it_mixes(tiny_frames, tmp_path):
  paths, user_features = _domain_files(tiny_frames, tmp_path)
  config = _source_config(paths, user_features, "transfer.balance=domains",
                          "transfer.source_weight=0.5")
  prepared = training.prepare(config)
  _, rows = prepared.training_examples()
  target = len(prepared.split.train)
  totals = (rows["sample_weight"][:target].sum(), rows["sample_weight"][target:].sum())
  assert totals == pytest.approx((len(rows), 0.5 * len(rows)))
