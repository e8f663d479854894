"""SavedModel export: TF Serving layout, atomic versions, fresh-process round trip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl.config import ModelConfig
from tfmtl.data import make_dataset
from tfmtl.serving import export_model

USERS = {"user_id": ["u1", "u7", "nobody"], "taste": ["t1", "t1", "t2"],
         "age": [25.0, 61.0, float("nan")]}
CANDIDATES = [["i1", "i2", "i3", "i4"], ["i5", "i1", "i0", "i9"], ["nothing", "i2", "i3", "i4"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
  data = tiny_data
  vocabulary = tfmtl.FeatureVocabulary.build(data, data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(embedding_dim=16))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.fit(make_dataset(data, data.interactions, model.encoder, 64), epochs=2, verbose=0)
  base = tmp_path_factory.mktemp("saved_models")
  return model, base, export_model(model, base, "tiny", top_k=5)


def _fresh_process(code: str) -> dict:
  """Runs `code` in a new Python that never imports tfmtl; returns its JSON."""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  guard = "import sys\nassert 'tfmtl' not in sys.modules\n"
  result = subprocess.run([sys.executable, "-c", guard + code + "\nassert 'tfmtl' not in sys.modules"],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd="/")
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_uses_tf_serving_layout(trained):
  _, base, path = trained
  assert path == base / "tiny" / "1"
  assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
  assert [p.name for p in (base / "tiny").iterdir()] == ["1"]  # no temporary folder left


def test_versions_increase_and_are_never_overwritten(trained, tmp_path):
  model, _, _ = trained
  assert export_model(model, tmp_path, "m").name == "1"
  assert export_model(model, tmp_path, "m").name == "2"
  with pytest.raises(FileExistsError, match="version 1 already exists"):
    export_model(model, tmp_path, "m", version=1)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_names_that_would_leave_the_base_path_are_refused(trained, tmp_path, name):
  model, _, _ = trained
  with pytest.raises(ValueError, match="export name"):
    export_model(model, tmp_path, name)
  assert list(tmp_path.iterdir()) == []


def test_an_interrupted_export_leaves_no_version(trained, tmp_path, monkeypatch):
  model, _, _ = trained

  def crash(module, path, signatures):
    Path(path).mkdir(parents=True)
    (Path(path) / "saved_model.pb").write_bytes(b"half")
    raise KeyboardInterrupt
  monkeypatch.setattr(tf.saved_model, "save", crash)
  with pytest.raises(KeyboardInterrupt):
    export_model(model, tmp_path, "m")
  assert [p.name for p in (tmp_path / "m").iterdir()] == []


def test_saved_model_cli_shows_the_documented_signatures(trained):
  _, _, path = trained
  cli = Path(sys.executable).with_name("saved_model_cli")
  shown = subprocess.run([str(cli), "show", "--dir", str(path), "--all"],
                         capture_output=True, text=True, timeout=300).stdout
  for signature in ("serving_default", "retrieve", "rank"):
    assert f"signature_def['{signature}']" in shown
  for tensor in ("inputs['user_id']", "inputs['taste']", "inputs['age']",
                 "inputs['item_id']", "outputs['item_ids']", "outputs['scores']",
                 "outputs['rating']", "outputs['like']"):
    assert tensor in shown, tensor
  assert "inputs['rating']" not in shown  # labels are never inputs


def test_fresh_process_without_tfmtl_gives_the_in_memory_scores(trained):
  model, _, path = trained
  loaded = _fresh_process(f"""
import json, tensorflow as tf
nan = float("nan")
model = tf.saved_model.load({str(path)!r})
users = {{k: tf.constant(v) for k, v in {USERS!r}.items()}}
retrieved = model.signatures["retrieve"](**users)
ranked = model.signatures["rank"](item_id=tf.constant({CANDIDATES!r}), **users)
default = model.signatures["serving_default"](**users)
print(json.dumps({{"item_ids": retrieved["item_ids"].numpy().astype(str).tolist(),
                   "scores": retrieved["scores"].numpy().tolist(),
                   "default_ids": default["item_ids"].numpy().astype(str).tolist(),
                   "rating": ranked["rating"].numpy().tolist(),
                   "like": ranked["like"].numpy().tolist()}}))
""")
  raw_users = {k: np.array(v, dtype=np.float32 if k == "age" else object)
               for k, v in USERS.items()}
  query = model.query_tower(model.encoder(raw_users))
  scores = tf.linalg.matmul(query, model.catalogue_embeddings(), transpose_b=True).numpy()
  order = np.argsort(-scores, axis=1)[:, :5]
  assert loaded["item_ids"] == model.catalogue_item_ids[order].tolist()
  assert loaded["default_ids"] == loaded["item_ids"]
  np.testing.assert_allclose(loaded["scores"], np.take_along_axis(scores, order, 1), atol=1e-5)

  pairs = {k: np.repeat(v, 4) for k, v in raw_users.items()}
  pairs["item_id"] = np.array(CANDIDATES, dtype=object).reshape(-1)
  items = model.catalogue_item_ids.tolist()
  catalogue = model.catalogue_features
  rows = [items.index(i) if i in items else None for i in pairs["item_id"]]
  encoded = model.encoder(pairs)
  for name, values in catalogue.items():  # item features come from the catalogue
    if name != "item_id":
      missing = model.encoder(model.encoder.missing(1))[name][0]
      encoded[name] = tf.stack([values[r] if r is not None else missing for r in rows])
  expected = model(encoded)
  np.testing.assert_allclose(loaded["rating"], expected["rating"].numpy().reshape(3, 4),
                             atol=1e-5)
  np.testing.assert_allclose(loaded["like"], expected["like"].numpy().reshape(3, 4),
                             atol=1e-5)


def test_unknown_users_and_items_still_answer(trained):
  _, _, path = trained
  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["rank"](
      user_id=tf.constant(["ghost"]), taste=tf.constant(["?"]), age=tf.constant([np.nan]),
      item_id=tf.constant([["ghost-item", "i1"]]))
  assert out["rating"].shape == (1, 2) and np.isfinite(out["rating"].numpy()).all()


def test_retrieve_k_is_clipped_to_the_catalogue(trained, tmp_path):
  model, _, _ = trained
  path = export_model(model, tmp_path, "big_k", top_k=10_000)
  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["retrieve"](user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]),
                                      age=tf.constant([30.0]))
  assert out["item_ids"].shape == (1, len(model.catalogue_item_ids))


def test_a_sequence_model_exports_with_a_history_input(tiny_data, tmp_path):
  from tfmtl.config import SequenceConfig
  from tfmtl.data import Split
  from tfmtl.data.history import add_history
  from tfmtl.evaluation import ModelScorer
  empty = tiny_data.interactions.iloc[:0]
  split = add_history(Split(tiny_data.interactions, empty, empty), length=5)
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, split.train, history_length=5)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(
      embedding_dim=8, sequence=SequenceConfig(type="gru", length=5)))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.fit(make_dataset(tiny_data, split.train, model.encoder, 64), epochs=2, verbose=0)
  retrieve = tf.saved_model.load(str(export_model(model, tmp_path, "seq"))).signatures[
      "retrieve"]
  assert set(retrieve.structured_input_signature[1]) == {"user_id", "taste", "age", "history"}
  scorer = ModelScorer(model, tiny_data, split.train)
  users = np.array(["u1", "u7"], dtype=object)
  latest = scorer._users.loc[users, "history"].tolist()
  served = retrieve(user_id=tf.constant(users.astype(str)), taste=tf.constant(["t1", "t1"]),
                    age=tf.constant(tiny_data.users.set_index("user_id").loc[users, "age"]
                                    .to_numpy(np.float32)),
                    history=tf.constant(latest))
  expected = np.sort(scorer.scores(users), axis=1)[:, ::-1][:, :served["scores"].shape[1]]
  np.testing.assert_allclose(served["scores"].numpy(), expected, atol=1e-5)
  other = retrieve(user_id=tf.constant(users.astype(str)), taste=tf.constant(["t1", "t1"]),
                   age=tf.constant([30.0, 30.0]), history=tf.constant(["i3|i6", ""]))
  assert not np.allclose(other["scores"].numpy(), served["scores"].numpy())
