"""Item text -> content vector inside an export, for items no one has seen.

An export of a model that reads item text (`content.encoder`) carries its
text encoder whole: the item's columns are formatted by the content recipe
(as `tfmtl.content.item_texts` formats them), tokenized as keras-hub's BERT
preprocessor tokenizes them, and encoded by every layer of the backbone
(the fine-tuned top layers of `content.fine_tune`, when it trained some),
so the vector equals the content table's. The tokenizer is made of
tensorflow-text's classic ops (regex split, case folding, WordPiece), which
stock TF Serving has built in since 2.2; a Python process that loads the
export imports `tensorflow_text` first, which registers them.

Example (the encoder of a run trained with `content.encoder: minilm`):

    text = ServingText.for_run("runs/movielens_100k", config)
    vectors = text(tf.constant(["Toy Story (1995). Animation, Comedy"]))
    same = text.item_vectors({"title": tf.constant(["Toy Story (1995)"]),
                              "genres": tf.constant(["Animation|Comedy"])})
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfmtl import text_tuning
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.content import recipe_columns


class WordPieceTokenizer(tf.Module):
  """Texts -> BERT inputs as keras-hub's BERT preprocessor makes them:
  `[CLS] tokens [SEP]`, cut to `sequence_length`, padded with 0 to the
  batch's longest; returns (token_ids int32, padding_mask bool), each
  [batch, tokens].

  Args:
    tokenizer: the keras-hub `WordPieceTokenizer` to reproduce (its
      vocabulary and pre-tokenization settings).
    sequence_length: tokens per text, `[CLS]` and `[SEP]` included.
  """

  def __init__(self, tokenizer, sequence_length: int):
    super().__init__(name="word_piece_tokenizer")
    import tensorflow_text  # pylint: disable=import-outside-toplevel
    if tokenizer.special_tokens_in_strings:
      raise ValueError("the tokenizer reads special tokens inside texts; exports do not")
    vocabulary = tokenizer.get_vocabulary()
    self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(vocabulary), tf.range(len(vocabulary), dtype=tf.int64)), default_value=-1)
    self.word_pieces = tensorflow_text.WordpieceTokenizer(
        self.table, suffix_indicator=tokenizer.suffix_indicator, max_bytes_per_word=100,
        token_out_type=tf.int64, unknown_token=tokenizer.oov_token)
    self.settings = (tokenizer.lowercase, tokenizer.strip_accents, tokenizer.split,
                     tokenizer.split_on_cjk)
    self.start, self.end = tokenizer.cls_token_id, tokenizer.sep_token_id
    self.sequence_length = sequence_length

  def __call__(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # keras-hub's own pre-tokenization (the ops it runs before its WordPiece)
    from keras_hub.src.tokenizers.word_piece_tokenizer import \
        pretokenize  # pylint: disable=import-outside-toplevel
    words = pretokenize(texts, *self.settings)
    pieces = self.word_pieces.tokenize(words).merge_dims(-2, -1)[:, :self.sequence_length - 2]
    batch = tf.shape(texts)[:1]
    tokens = tf.concat([tf.fill(tf.concat([batch, [1]], 0), tf.constant(self.start, tf.int64)),
                        pieces,
                        tf.fill(tf.concat([batch, [1]], 0), tf.constant(self.end, tf.int64))],
                       axis=1)
    return (tf.cast(tokens.to_tensor(0), tf.int32),
            tf.sequence_mask(tokens.row_lengths(), tf.reduce_max(tokens.row_lengths())))


class ServingText(tf.Module):
  """Texts -> content vectors, float32 [batch, dim], as the content table
  made them (module doc): tokenizer, embeddings, the backbone's layers
  (its top ones fine-tuned, if `fine_tuned_layers`), mean pooling, L2
  normalisation and, for a `projected` table, the objective's layer.

  Args:
    encoder: the `tfmtl.content.TextEncoder` the table was made with.
    recipe: the item text recipe (`content.text`), for `item_vectors`.
    sequence_length: tokens read per text.
    top_layers, lora_rank, projected: `content.fine_tune`'s settings (0, 0
      and False for a table without fine-tuning).
    fine_tuned_layers: the fine-tuned layers' weights (the table's or the
      run's), when `top_layers` is not 0.
  """

  @classmethod
  def for_config(cls, config: ExperimentConfig,
                 fine_tuned_layers: Optional[list[np.ndarray]] = None
                 ) -> Optional["ServingText"]:
    """The text encoder of a model trained under `config` (None when it
    reads no item text); `fine_tuned_layers`: the content table's or the
    run's, when `content.fine_tune` trained some."""
    from tfmtl.content import TextEncoder  # pylint: disable=import-outside-toplevel
    content = config.content
    if content.encoder == "none":
      return None
    tuning = content.fine_tune
    tuned = tuning.objective != "none"
    if tuned and not fine_tuned_layers:
      raise ConfigError("content.fine_tune: the fine-tuned layers are needed to export the "
                        "fine-tuned text encoder (a run keeps them in content_layers.npz)")
    return cls(TextEncoder(content.encoder, content.sequence_length, config.data.cache_dir),
               content.text, content.sequence_length, tuning.top_layers if tuned else 0,
               tuning.lora_rank if tuned else 0, tuned and tuning.projected,
               fine_tuned_layers)

  @classmethod
  def for_run(cls, run_dir: str | Path, config: ExperimentConfig) -> Optional["ServingText"]:
    """`for_config` of a saved run (its config and fine-tuned layers)."""
    from tfmtl import runs  # pylint: disable=import-outside-toplevel
    tuned = config.content.encoder != "none" and config.content.fine_tune.objective != "none"
    return cls.for_config(config, runs.content_layers(run_dir) if tuned else None)

  def __init__(self, encoder, recipe: str, sequence_length: int, top_layers: int = 0,
               lora_rank: int = 0, projected: bool = False,
               fine_tuned_layers: Optional[list[np.ndarray]] = None):
    super().__init__(name="serving_text")
    self.recipe = recipe
    self.columns = recipe_columns(recipe)
    self.tokenizer = WordPieceTokenizer(encoder.preprocessor.tokenizer, sequence_length)
    self.embeddings = encoder.embeddings()
    top_layers = top_layers or len(encoder.backbone.transformer_layers)  # 0: all, pretrained
    self.lower = encoder.lower_blocks(top_layers)
    self.head, self.output = text_tuning.fine_tuned_layers(
        encoder, top_layers, lora_rank=lora_rank, weights=fine_tuned_layers)
    if projected and self.output is None:
      raise ValueError("projected: the fine-tuned layers have no objective layer")
    self.projected = projected

  def item_vectors(self, columns: dict[str, tf.Tensor]) -> tf.Tensor:
    """The vectors of items given by the recipe's `columns` (`recipe_texts`)."""
    return self(recipe_texts(columns, self.recipe))

  def __call__(self, texts: tf.Tensor) -> tf.Tensor:
    token_ids, padding_mask = self.tokenizer(texts)
    states = self.embeddings(token_ids)
    for block in self.lower:
      states = block(states, padding_mask)
    vectors = self.head(states, padding_mask)
    return tf.math.l2_normalize(self.output(vectors), -1) if self.projected else vectors


def recipe_texts(columns: dict[str, tf.Tensor], recipe: str) -> tf.Tensor:
  """`recipe` filled from string or float `columns` [batch] as
  `tfmtl.content.item_texts` fills it from a table: missing values (NaN,
  "") empty, whole numbers without `.0`, `|`-joined tokens comma-separated."""
  parts = []
  for literal, field, _, _ in string.Formatter().parse(recipe):
    if literal:
      parts.append(literal)
    if field:
      parts.append(_readable(columns[field]))
  return tf.strings.strip(tf.strings.join(parts))


def _readable(values: tf.Tensor) -> tf.Tensor:
  if values.dtype == tf.string:
    tokens = tf.strings.split(values, "|")
    tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
    return tf.strings.reduce_join(tokens, axis=-1, separator=", ")
  values = tf.cast(values, tf.float64)
  whole = tf.math.equal(values, tf.math.floor(values)) & tf.math.is_finite(values)
  text = tf.where(whole, tf.strings.as_string(tf.cast(tf.where(whole, values, 0.0), tf.int64)),
                  tf.strings.as_string(values, shortest=True))
  return tf.where(tf.math.is_nan(values), "", text)
