"""The ScaNN retrieval index (`export.index: scann`).

scann's TensorFlow ops are built for TensorFlow 2.20, so these tests run in
the `scann` extra's own environment (`pip install -e ".[scann,dev]"`) and are
skipped elsewhere, where the last test checks the error that says so.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfmtl import runs, training
from tfmtl.config import ConfigError, ExperimentConfig, ScannConfig
from tfmtl.serving.export import export_configured
from tfmtl.serving.index import BruteForceIndex, ScannIndex, require_scann
from tfmtl.serving.validate import validate_export


def _why_scann_does_not_load() -> str:
  try:
    require_scann()
  except ConfigError as error:
    return str(error)
  return ""


WHY_NOT = _why_scann_does_not_load()
needs_scann = pytest.mark.skipif(bool(WHY_NOT), reason=f"scann's ops do not load: {WHY_NOT}")
USERS = {"user_id": ["u1", "u7", "nobody"], "taste": ["t1", "t1", "t2"],
         "age": [25.0, 61.0, float("nan")]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_prepared):
  """A trained run and its config, saved for `tfmtl validate`."""
  folder, prepared = tmp_path_factory.mktemp("runs"), tiny_prepared
  config = ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=1", "export.index=scann",
      "export.recommend_candidates=10", "export.top_k=5"])
  model = training.fit(config, prepared, verbose=0)
  return runs.save_run(folder / "run", config, prepared, model), config, model


def _signature(export, name, **inputs):
  served = tf.saved_model.load(str(export)).signatures[name]
  return {key: value.numpy() for key, value in served(
      **{key: tf.constant(value) for key, value in inputs.items()}).items()}


@needs_scann
def test_searching_every_partition_answers_as_brute_force_does(run, tmp_path):
  # 40 items: the defaults search all 6 partitions and rescore all 40 exactly.
  _, config, model = run
  scann = export_configured(model, config, tmp_path / "scann")
  exact = export_configured(model, config.with_overrides(["export.index=brute_force"]),
                            tmp_path / "exact")
  request = {**USERS, "k": np.array([4, 4, 4], np.int32),
             "exclude_item_ids": np.array([["i1", "i2"], ["i0", ""], ["", ""]])}
  for name in ("retrieve", "recommend"):
    approximate, brute = (_signature(path, name, **request) for path in (scann, exact))
    assert approximate["item_ids"].tolist() == brute["item_ids"].tolist(), name
    for output, values in brute.items():
      if output != "item_ids":
        np.testing.assert_allclose(approximate[output], values, rtol=1e-4, atol=1e-4)
  assert not {b"i1", b"i2"} & set(approximate["item_ids"][0].tolist())
  assert b"i0" not in _signature(scann, "retrieve", **request)["item_ids"][1].tolist()


@needs_scann
def test_places_scann_cannot_fill_are_empty(run, tmp_path):
  # Rescoring only 6 items: a request for 9 gets 6 items, then "" at the lowest score.
  _, config, model = run
  export = export_configured(model, config.with_overrides(
      ["export.scann.num_reordering_candidates=6"]), tmp_path)
  answer = _signature(export, "retrieve", **USERS, k=np.array([9, 9, 9], np.int32),
                      exclude_item_ids=np.zeros([3, 0], str))
  assert answer["item_ids"].shape == (3, 9)
  assert (answer["item_ids"][:, :6] != b"").all() and (answer["item_ids"][:, 6:] == b"").all()
  assert (answer["scores"][:, 6:] == np.finfo(np.float32).min).all()


@needs_scann
def test_a_scann_export_passes_validation(run, tmp_path):
  run_dir, config, model = run
  checks = validate_export(run_dir, export_configured(model, config, tmp_path))
  assert all(check.passed for check in checks), checks


@needs_scann
def test_default_scann_finds_most_of_the_exact_top_items():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(50, 16))
  items = (centres[rng.integers(50, size=20_000)] + 0.3 * rng.normal(size=(20_000, 16)))
  queries = tf.constant(rng.normal(size=(64, 16)), tf.float32)
  nothing = tf.fill([64, 0], -1)
  _, exact = BruteForceIndex(tf.constant(items.T, tf.float32)).top(queries, 10, nothing)
  _, found = ScannIndex(items.astype(np.float32), 100, ScannConfig()).top(queries, 10, nothing)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.numpy(), found.numpy())])
  assert recall >= 0.95


@pytest.mark.skipif(not WHY_NOT, reason="scann's ops load here")
def test_without_scann_the_error_says_how_to_install_it(run, tmp_path):
  _, config, model = run
  with pytest.raises(ConfigError, match=r"export.index: scann .*tfmtl\[scann\]"):
    export_configured(model, config, tmp_path)
  assert not list(tmp_path.iterdir())  # nothing half-written
