"""Multi-domain training (`data.domain_column`): shared towers, ranking heads or
gates per domain, and a `domain` input in the export's ranking signatures.

The module's data is the tiny set with a `site` column: on site `b` every
rating is reversed (6 - rating), so one set of heads cannot fit both sites
from the towers alone (they do not read the site)."""

import functools

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from tfmtl import evaluation, runs, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.data import DataError, InteractionData
from tfmtl.layers.domains import DomainGate
from tfmtl.layers.heads import DomainHeads


def test_each_domain_head_learns_from_its_own_domain_only():
  heads = DomainHeads([4], num_domains=2)
  inputs = tf.random.stateless_normal([6, 3], seed=[1, 2])
  for domains, trained in (([1, 1, 1, 1, 1, 1], [True, False]), ([2, 2, 2, 1, 1, 1], [True, True]),
                           ([0, 0, 0, 0, 0, 0], [True, True])):  # 0: unknown, the heads' mean
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(heads(inputs, tf.constant(domains)))
    gradients = tape.gradient(loss, [head.trainable_weights for head in heads.domain_heads])
    got = [any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in head)
           for head in gradients]
    assert got == trained, domains
  logits = heads(inputs, tf.constant([1, 2, 0, 1, 2, 0]))[:, 0].numpy()
  each = [head(inputs)[:, 0].numpy() for head in heads.domain_heads]
  own = np.select([np.arange(6) % 3 == 0, np.arange(6) % 3 == 1], each, (each[0] + each[1]) / 2)
  np.testing.assert_allclose(logits, own, atol=1e-6)
  with_shared = DomainHeads([4], num_domains=2, shared=True)  # its own heads learn differences
  with tf.GradientTape() as tape:
    logits = with_shared(inputs, tf.constant([1, 1, 1, 1, 1, 1]))
  shared = with_shared.shared_head(inputs).numpy()
  np.testing.assert_allclose(logits, with_shared.domain_heads[0](inputs).numpy() + shared,
                             atol=1e-6)
  other, common = tape.gradient(logits, [with_shared.domain_heads[1].trainable_weights,
                                          with_shared.shared_head.trainable_weights])
  assert not any(np.any(g) for g in other if g is not None)  # domain 2's head: no rows
  assert all(np.any(g) for g in common)


def test_a_domain_gate_is_its_domains_softmax():
  gate = DomainGate(3, num_domains=2)
  inputs = tf.random.stateless_normal([2, 4], seed=[3, 4])
  weights = gate(inputs, tf.constant([2, 0])).numpy()
  logits = tf.reshape(tf.matmul(inputs, gate.kernel) + gate.bias, [2, 2, 3]).numpy()
  np.testing.assert_allclose(weights[0], tf.nn.softmax(logits[0, 1]), atol=1e-6)
  np.testing.assert_allclose(weights[1], tf.nn.softmax(logits[1].mean(axis=0)), atol=1e-6)
  plain = DomainGate(3)  # no domains: one softmax gate, as a Dense layer's
  assert plain(inputs).shape == (2, 3) and plain.kernel.shape == (4, 3)


@pytest.fixture(scope="module")
def sites(tmp_path_factory, tiny_frames):
  """The config file of the module's data (see module doc)."""
  make_frames, _ = tiny_frames
  interactions, users, items = make_frames()
  interactions["site"] = np.where(np.random.default_rng(1).random(len(interactions)) < 0.5,
                                  "a", "b")
  reversed_ = interactions["site"] == "b"
  interactions.loc[reversed_, "rating"] = 6 - interactions.loc[reversed_, "rating"]
  folder = tmp_path_factory.mktemp("sites")
  for name, frame in (("ratings", interactions), ("users", users), ("items", items)):
    frame.to_csv(folder / f"{name}.csv", index=False)
  path = folder / "sites.yaml"
  path.write_text(yaml.safe_dump({
      "name": "sites",
      "data": {"source": "files", "interactions": str(folder / "ratings.csv"),
               "users": str(folder / "users.csv"), "items": str(folder / "items.csv"),
               "user_features": {"taste": "categorical"},
               "item_features": {"genres": "multi_categorical"}, "domain_column": "site"},
      "train": {"epochs": 15, "batch_size": 64, "learning_rate": 0.02, "validate_every": 0,
                "log_dir": ""},
      "export": {"base_path": str(folder / "saved_models")}}))
  return path


@pytest.fixture(scope="module")
def trained(sites):
  """`train(*overrides)`: the module's config with `overrides`, trained once:
  (config, prepared, model)."""
  @functools.cache
  def train(*overrides):
    config = ExperimentConfig.from_file(sites).with_overrides(list(overrides))
    prepared = training.prepare(config)
    return config, prepared, training.fit(config, prepared, verbose=0)
  return train


@pytest.mark.parametrize("per_domain", [
    ["model.multitask.per_domain=heads"],
    ["model.multitask={type: mmoe, layers: [16], num_experts: 2, per_domain: gates}"]])
def test_per_domain_heads_or_gates_fit_domains_that_disagree(trained, per_domain):
  _, prepared, model = trained(*per_domain)
  assert sorted(prepared.vocabulary.domains) == ["a", "b"]
  own = evaluation.ranking_metrics(model, prepared.data, prepared.split.test)["rating_rmse"]
  _, pooled_prepared, pooled_model = trained("data.domain_column=null")
  assert pooled_prepared.split.test[["user_id", "item_id"]].equals(
      prepared.split.test[["user_id", "item_id"]])  # the same test rows
  pooled = evaluation.ranking_metrics(pooled_model, pooled_prepared.data,
                                      pooled_prepared.split.test)["rating_rmse"]
  assert own < pooled - 0.2, (own, pooled)


@pytest.mark.slow
def test_the_export_ranks_for_the_requested_domain(trained, tmp_path):
  from tfmtl.serving.export import export_configured
  from tfmtl.serving.validate import validate_export
  config, prepared, model = trained("model.multitask.per_domain=heads")
  run = runs.save_run(tmp_path / "run", config, prepared, model)
  export = export_configured(model, config)
  served = tf.saved_model.load(str(export)).signatures
  assert "domain" in served["rank"].structured_input_signature[1]
  assert "domain" in served["recommend"].structured_input_signature[1]
  assert "domain" not in served["retrieve"].structured_input_signature[1]  # shared
  users = prepared.data.users.set_index("user_id").loc[["u0", "u0", "u0"]]
  items = ["i0", "i1", "i3"]
  answer = served["rank"](user_id=tf.constant(users.index.to_numpy(str)),
                          taste=tf.constant(users["taste"].to_numpy(str)),
                          item_id=tf.constant([items] * 3),
                          domain=tf.constant(["a", "b", "elsewhere"]))["rating"].numpy()
  pairs = pd.DataFrame({"user_id": "u0", "item_id": items * 3, "rating": 0.0,
                        "domain": np.repeat(["a", "b", "elsewhere"], 3)})
  expected = model(model.encoder(prepared.data.examples(pairs)))["rating"].numpy()
  np.testing.assert_allclose(answer.reshape(-1), expected, atol=1e-5)
  assert np.abs(answer[0] - answer[1]).max() > 0.5  # the sites disagree
  failed = [check for check in validate_export(run, export) if not check.passed]
  assert not failed, failed  # its warm-up requests, with domains, replay in a fresh process


def test_a_domain_can_come_from_the_user_table(tiny_data):
  data = InteractionData.from_frames(tiny_data.interactions, tiny_data.users, tiny_data.items,
                                     tiny_data.user_features, tiny_data.item_features,
                                     domain_column="taste")
  tastes = tiny_data.users.set_index("user_id")["taste"]
  assert (data.interactions["domain"].to_numpy()
          == tastes.loc[data.interactions["user_id"]].to_numpy()).all()
  assert "domain" not in data.label_columns


@pytest.mark.parametrize("users, message", [
    (None, r"data.domain_column: 'site' is neither a column of interactions nor of users"),
    (pd.DataFrame({"user_id": ["u1"], "site": [None]}),
     r"data.domain_column: user 'u1' has no 'site' in users"),
])
def test_a_domain_column_that_is_not_there_is_named(users, message):
  with pytest.raises(DataError, match=message):
    InteractionData.from_frames(pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"]}), users,
                                domain_column="site")


@pytest.mark.parametrize("overrides, message", [
    (["model.multitask.per_domain=gates"], r"per_domain: gates needs a gated block"),
    (["data.domain_column=site", "transfer.source={source: movielens_100k}"],
     r"data.domain_column: not with transfer.source"),
])
def test_domain_settings_that_cannot_work_are_config_errors(overrides, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig().with_overrides(overrides)


def test_a_model_without_domains_has_one_head_per_task(tiny_prepared):
  from tfmtl.layers import PredictionHead
  from tfmtl.model import build_model
  model = build_model(ExperimentConfig(), tiny_prepared.vocabulary, tiny_prepared.data.items)
  assert all(type(head) is PredictionHead for head in model.ranking.heads.values())
  assert "domain" not in model.encoder.lookups
