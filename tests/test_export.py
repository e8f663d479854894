"""SavedModel export: TF Serving layout, atomic versions, fresh-process round trip."""

import os
import shutil
import socket
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
  return model, base, export_model(model, base, "tiny", top_k=5, recommend_candidates=10)


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
  assert list(tmp_path.iterdir()) == []  # as it was: no version, no model folder


def test_an_export_traces_each_signature_once(trained, tmp_path, monkeypatch):
  """A signature traced before `tf.saved_model.save` is traced again in it
  (the save's context is part of tf.function's cache key)."""
  model, _, _ = trained
  saved, save = [], tf.saved_model.save
  def recording_save(module, path, signatures):
    saved.append(module)
    save(module, path, signatures=signatures)
  monkeypatch.setattr(tf.saved_model, "save", recording_save)
  export_model(model, tmp_path, "m")
  [module] = saved
  assert {name: getattr(module, name).experimental_get_tracing_count()
          for name in module.signature_specs} == dict.fromkeys(module.signature_specs, 1)


def test_saved_model_cli_shows_the_documented_signatures(trained):
  _, _, path = trained
  cli = Path(sys.executable).with_name("saved_model_cli")
  shown = subprocess.run([str(cli), "show", "--dir", str(path), "--all"],
                         capture_output=True, text=True, timeout=300).stdout
  for signature in ("serving_default", "retrieve", "rank", "recommend", "query_embedding",
                    "candidate_embedding"):
    assert f"signature_def['{signature}']" in shown
  for tensor in ("inputs['user_id']", "inputs['taste']", "inputs['age']",
                 "inputs['item_id']", "inputs['k']", "inputs['exclude_item_ids']",
                 "outputs['item_ids']", "outputs['scores']", "outputs['score']",
                 "outputs['rating']", "outputs['like']", "outputs['retrieval']",
                 "outputs['embedding']"):
    assert tensor in shown, tensor
  assert "inputs['rating']" not in shown  # labels are never inputs


def _raw(users: dict) -> dict:
  return {k: np.array(v, dtype=np.float32 if k == "age" else object) for k, v in users.items()}


def _in_memory_predictions(model, users: dict, item_ids: np.ndarray) -> dict:
  """The model's ranking predictions for each user (row) and item (column)."""
  per_row = item_ids.shape[1]
  pairs = {k: np.repeat(v, per_row) for k, v in _raw(users).items()}
  pairs["item_id"] = item_ids.reshape(-1)
  items = model.catalogue_item_ids.tolist()
  rows = [items.index(i) if i in items else None for i in pairs["item_id"]]
  encoded = model.encoder(pairs)
  missing = model.encoder(model.encoder.missing(1))
  for name, values in model.catalogue_features.items():  # item features: the catalogue's
    if name != "item_id":
      encoded[name] = tf.stack([values[r] if r is not None else missing[name][0] for r in rows])
  return {name: value.numpy().reshape(item_ids.shape)
          for name, value in model(encoded).items() if name in ("rating", "like")}


def test_fresh_process_without_tfmtl_gives_the_in_memory_scores(trained, fresh_process):
  model, _, path = trained
  query = model.query_tower(model.encoder(_raw(USERS)))
  scores = tf.linalg.matmul(query, model.catalogue_embeddings(), transpose_b=True).numpy()
  order = np.argsort(-scores, axis=1)
  best = model.catalogue_item_ids[order[0, 0]]
  exclude = [[best, ""], ["no-such-item", ""], ["", ""]]
  loaded = fresh_process(f"""
import json, tensorflow as tf
nan = float("nan")
model = tf.saved_model.load({str(path)!r})
users = {{k: tf.constant(v) for k, v in {USERS!r}.items()}}
asked = dict(k=tf.constant([3, 3, 3]), exclude_item_ids=tf.constant({exclude!r}), **users)
answers = {{"retrieve": model.signatures["retrieve"](**asked),
            "recommend": model.signatures["recommend"](**asked),
            "rank": model.signatures["rank"](item_id=tf.constant({CANDIDATES!r}), **users),
            "default": model.signatures["serving_default"](**users),
            "query": model.signatures["query_embedding"](**users),
            "candidate": model.signatures["candidate_embedding"](
                item_id=tf.constant(["i1", "no-such-item"]))}}
print(json.dumps({{signature: {{name: (value.numpy().astype(str) if value.dtype == tf.string
                                     else value.numpy()).tolist()
                              for name, value in outputs.items()}}
                  for signature, outputs in answers.items()}}))
""")
  # serving_default: the top 5 over the catalogue.
  top5 = order[:, :5]
  assert loaded["default"]["item_ids"] == model.catalogue_item_ids[top5].tolist()
  np.testing.assert_allclose(loaded["default"]["scores"], np.take_along_axis(scores, top5, 1),
                             atol=1e-5)
  # retrieve: the top 3 once the excluded item is gone (unknown and "" ids ignored).
  kept = np.array([[c for c in row if model.catalogue_item_ids[c] != best or i > 0][:3]
          for i, row in enumerate(order)])
  assert loaded["retrieve"]["item_ids"] == model.catalogue_item_ids[kept].tolist()
  assert best not in loaded["retrieve"]["item_ids"][0]
  np.testing.assert_allclose(loaded["retrieve"]["scores"], np.take_along_axis(scores, kept, 1),
                             atol=1e-5)
  # recommend: the 10 best retrieved (excluded gone), blended rating + like, top 3.
  shortlist = np.array([[c for c in row if model.catalogue_item_ids[c] != best or i > 0][:10]
                        for i, row in enumerate(order)])
  predicted = _in_memory_predictions(model, USERS, model.catalogue_item_ids[shortlist])
  blend = predicted["rating"] + predicted["like"]
  top3 = np.argsort(-blend, axis=1)[:, :3]
  assert loaded["recommend"]["item_ids"] == np.take_along_axis(
      model.catalogue_item_ids[shortlist], top3, 1).tolist()
  np.testing.assert_allclose(loaded["recommend"]["score"], np.take_along_axis(blend, top3, 1),
                             atol=1e-4)
  for name in ("rating", "like"):
    np.testing.assert_allclose(loaded["recommend"][name],
                               np.take_along_axis(predicted[name], top3, 1), atol=1e-5)
  np.testing.assert_allclose(loaded["recommend"]["retrieval"], np.take_along_axis(
      np.take_along_axis(scores, shortlist, 1), top3, 1), atol=1e-5)
  # rank: every task's prediction for the given candidates, unknown items included,
  # their retrieval scores (`scores`, which retrieve's equal above) and the blend
  # recommend ranks by.
  predicted = _in_memory_predictions(model, USERS, np.array(CANDIDATES, dtype=object))
  for name in ("rating", "like"):
    np.testing.assert_allclose(loaded["rank"][name], predicted[name], atol=1e-5)
  np.testing.assert_allclose(loaded["rank"]["score"], predicted["rating"] + predicted["like"],
                             atol=1e-5)
  items = model.catalogue_item_ids.tolist()
  for row, candidates in enumerate(CANDIDATES):
    known = [(place, items.index(item)) for place, item in enumerate(candidates)
             if item in items]
    np.testing.assert_allclose([loaded["rank"]["retrieval"][row][p] for p, _ in known],
                               [scores[row, c] for _, c in known], atol=1e-5)
  # The embeddings.
  np.testing.assert_allclose(loaded["query"]["embedding"], query.numpy(), atol=1e-5)
  i1 = model.catalogue_item_ids.tolist().index("i1")
  np.testing.assert_allclose(loaded["candidate"]["embedding"][0],
                             model.catalogue_embeddings().numpy()[i1], atol=1e-5)
  missing = model.candidate_tower(model.encoder(model.encoder.missing(1)))
  np.testing.assert_allclose(loaded["candidate"]["embedding"][1], missing.numpy()[0], atol=1e-5)


def test_unknown_users_and_items_still_answer(trained):
  _, _, path = trained
  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["rank"](
      user_id=tf.constant(["ghost"]), taste=tf.constant(["?"]), age=tf.constant([np.nan]),
      item_id=tf.constant([["ghost-item", "i1"]]))
  assert out["rating"].shape == (1, 2) and np.isfinite(out["rating"].numpy()).all()


def test_k_is_clipped_to_the_catalogue(trained, tmp_path):
  model, _, path = trained
  loaded = tf.saved_model.load(str(path))
  user = dict(user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]), age=tf.constant([30.0]))
  nothing = tf.zeros([1, 0], tf.string)
  for signature, most in (("retrieve", len(model.catalogue_item_ids)), ("recommend", 10)):
    for k, returned in ((10_000, most), (0, 1), (-5, 1)):
      out = loaded.signatures[signature](k=tf.constant([k]), exclude_item_ids=nothing, **user)
      assert out["item_ids"].shape == (1, returned), (signature, k)
  big = export_model(model, tmp_path, "big_k", top_k=10_000)
  out = tf.saved_model.load(str(big)).signatures["serving_default"](**user)
  assert out["item_ids"].shape == (1, len(model.catalogue_item_ids))


def test_excluding_everything_leaves_empty_places(trained):
  model, _, path = trained
  loaded = tf.saved_model.load(str(path))
  every_item = tf.constant([model.catalogue_item_ids[1:].astype(str)])
  out = loaded.signatures["retrieve"](user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]),
                                      age=tf.constant([30.0]), k=tf.constant([3]),
                                      exclude_item_ids=every_item)
  assert out["item_ids"].numpy().astype(str).tolist() == [[model.catalogue_item_ids[0], "", ""]]
  out = loaded.signatures["recommend"](user_id=tf.constant(["u1"]), taste=tf.constant(["t1"]),
                                       age=tf.constant([30.0]), k=tf.constant([3]),
                                       exclude_item_ids=every_item)
  assert out["item_ids"].numpy().astype(str).tolist() == [[model.catalogue_item_ids[0], "", ""]]
  lowest = np.finfo(np.float32).min
  for name in ("score", "rating", "like", "retrieval"):
    assert out[name].numpy()[0, 0] > lowest and (out[name].numpy()[0, 1:] == lowest).all(), name


@pytest.mark.parametrize("signature", ["retrieve", "recommend", "rank", "query_embedding"])
def test_inputs_of_different_batch_sizes_are_an_invalid_argument(trained, signature):
  _, _, path = trained
  function = tf.saved_model.load(str(path)).signatures[signature]
  inputs = dict(user_id=tf.constant(["u1", "u2"]), taste=tf.constant(["t1"]),
                age=tf.constant([30.0, 20.0]))
  extra = {"retrieve": dict(k=tf.constant([3, 3]), exclude_item_ids=tf.zeros([2, 0], tf.string)),
           "rank": dict(item_id=tf.constant([["i1"], ["i2"]]))}
  extra["recommend"] = extra["retrieve"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="batch sizes .* differ"):
    function(**inputs, **extra.get(signature, {}))


@pytest.fixture(scope="module")
def served(trained):
  """The `trained` export, loaded with `tf.saved_model.load`."""
  return tf.saved_model.load(str(trained[2]))


@pytest.mark.parametrize("signature, wrong, message", [
    ("retrieve", dict(k=3),
     r"k: expected shape \[batch\] \(one value per row\), got rank 0"),
    ("rank", dict(user_id=[["u1"]]),
     r"user_id: expected shape \[batch\] \(one value per row\), got rank 2"),
    ("recommend", dict(exclude_item_ids=["i1"]),
     r"exclude_item_ids: expected shape \[batch, n\] \(a list of ids per query\), got rank 1"),
], ids=["scalar k", "rank-2 user_id", "rank-1 exclude_item_ids"])
def test_an_input_of_the_wrong_rank_is_an_invalid_argument_naming_it(served, signature, wrong,
                                                                     message):
  function = served.signatures[signature]
  inputs = {**dict(user_id=["u1"], taste=["t1"], age=[30.0], k=[3], exclude_item_ids=[["i1"]],
                   item_id=[["i1", "i2"]]), **wrong}
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    function(**{name: tf.constant(value) for name, value in inputs.items()
                if name in function.structured_input_signature[1]})


@pytest.fixture(scope="module")
def sequence_export(tiny_data, tmp_path_factory):
  """A GRU sequence model (history length 5), its training split and its
  export, loaded."""
  from tfmtl.config import SequenceConfig
  from tfmtl.data import Split
  from tfmtl.data.history import add_history
  empty = tiny_data.interactions.iloc[:0]
  split = add_history(Split(tiny_data.interactions, empty, empty), length=5)
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, split.train, history_length=5)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(
      embedding_dim=8, sequence=SequenceConfig(type="gru", length=5)))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.fit(make_dataset(tiny_data, split.train, model.encoder, 64), epochs=2, verbose=0)
  path = export_model(model, tmp_path_factory.mktemp("saved_models"), "seq")
  return model, split, tf.saved_model.load(str(path))


def test_a_sequence_model_exports_with_a_history_input(tiny_data, sequence_export):
  from tfmtl.evaluation import ModelScorer
  model, split, loaded = sequence_export
  retrieve = loaded.signatures["serving_default"]
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


@pytest.mark.parametrize("history", [" i3 | i6 ", "i3||i6|", "i3|no-such-item|i6"],
                         ids=["spaces around ids", "empty ids", "unknown ids"])
def test_a_history_is_read_leniently(sequence_export, history):
  default = sequence_export[2].signatures["serving_default"]
  out = default(user_id=tf.constant(["u1"] * 3), taste=tf.constant(["t1"] * 3),
                age=tf.constant([30.0] * 3), history=tf.constant(["i3|i6", history, ""]))
  scores = out["scores"].numpy()
  assert out["item_ids"][0].numpy().tolist() == out["item_ids"][1].numpy().tolist()
  np.testing.assert_allclose(scores[1], scores[0], atol=1e-6)
  assert not np.allclose(scores[2], scores[0])  # not read as no history


def test_a_history_with_no_known_id_is_an_invalid_argument_naming_it(sequence_export):
  default = sequence_export[2].signatures["serving_default"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"history: `i3,i6` has no known item id; expected item ids "
                           r"joined by `\|`"):
    default(user_id=tf.constant(["u1", "u7"]), taste=tf.constant(["t1", "t1"]),
            age=tf.constant([30.0, 30.0]), history=tf.constant(["i3|i6", "i3,i6"]))


def test_warmup_requests_are_prediction_logs_that_replay(trained):
  from tensorflow_serving.apis import prediction_log_pb2
  _, _, path = trained
  loaded = tf.saved_model.load(str(path))
  seen = set()
  for record in tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    assert request.model_spec.name == "tiny"
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    signature = loaded.signatures[request.model_spec.signature_name]
    assert set(inputs) == set(signature.structured_input_signature[1])
    batch = len(next(iter(inputs.values())))
    outputs = signature(**inputs)
    assert all(value.shape[0] == batch for value in outputs.values())
    seen.add((request.model_spec.signature_name, batch))
  assert seen == {(s, b) for s in loaded.signatures for b in (1, 8)}


def test_the_base_path_gets_a_models_config_and_batching_parameters(trained):
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  model, base, _ = trained
  export_model(model, base, "second")
  config = text_format.Parse((base / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  assert {(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config} == {
      ("tiny", "/models/tiny", "tensorflow"), ("second", "/models/second", "tensorflow")}
  batching = (base / "batching.config").read_text()
  for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
    assert f"{field} {{ value: " in batching


def test_an_export_removes_what_killed_exports_left_and_nothing_else(trained, tmp_path):
  model, _, _ = trained
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()  # a process id no process has now
  host = socket.gethostname()
  left = {f".tmp-1-7.{gone.pid}@{host}": False,  # killed while writing version 1
          f".removing-3-7.{gone.pid}@{host}": False,  # killed while pruning version 3
          f".tmp-2-8.{os.getpid()}@{host}": True,  # an export still running
          f".tmp-2-9.{gone.pid}@another-host": True,  # a shared base path: not ours to judge
          ".notes": True}
  for name in left:
    (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / name / "saved_model.pb").write_bytes(b"")
  export_model(model, tmp_path, "m")
  assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
      ["1", *(name for name, kept in left.items() if kept)])


def test_keep_versions_prunes_the_oldest(trained, tmp_path, monkeypatch):
  model, _, _ = trained
  for _ in range(3):
    export_model(model, tmp_path, "m", keep_versions=2)
  assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["2", "3"]
  # Killed while removing version 2: what is left is hidden from TF Serving.
  def killed_midway(path, *args, **kwargs):
    if Path(path).exists():  # (the export's own staging folder is gone by then)
      (Path(path) / "saved_model.pb").unlink()
      raise KeyboardInterrupt
  monkeypatch.setattr(shutil, "rmtree", killed_midway)
  with pytest.raises(KeyboardInterrupt):
    export_model(model, tmp_path, "m", keep_versions=2)
  numbered = sorted(p for p in (tmp_path / "m").iterdir() if p.name.isdigit())
  assert [p.name for p in numbered] == ["3", "4"]
  assert all((p / "saved_model.pb").is_file() for p in numbered)
