"""Fine-tuning from a pretrained model: load with remapped vocabularies,
freeze by component, pull back toward the pretrained weights (L2-SP).

Any trained run (`tfmtl train` writes `runs/<name>/`) is a pretrained model
for another dataset or domain. `load_pretrained(model, source)` copies the
source model's weights into a new model, variable by variable name:

- vocabulary-indexed tables (the user-id and item-id embeddings, each
  feature's token embeddings, the history's item embedding) are remapped:
  ids and tokens known to both models keep their learned rows, new ones
  keep their fresh rows (bucketized features only when their bucket
  boundaries are the same); a mixed-dimension id embedding's block tables
  are remapped the same way over the ids each block holds, so an id keeps
  its row when it is in the same block in both models;
- each tower's first dense kernel is remapped by input part (the id, each
  feature, the history): a part both towers read at the same width keeps
  its rows, and a feature only this model reads (e.g. one the pretrained
  model predicted with a classification task, so did not read) keeps its
  fresh rows and its fresh embedding;
- every other variable must have the same shape, or a `ValueError` names it.

Variables belong to one of four components: `embeddings` (id, feature and
content-adapter embeddings), `towers` (the towers' other layers),
`experts` (the multi-task block and DCN layers) and `heads` (the task
heads). `FineTuning` freezes components for their first epochs, scales
the pretrained variables' learning rate, and adds the L2-SP penalty
(Li, Grandvalet and Davoine 2018): `strength / 2 * ||w - w_pretrained||^2`
over the loaded variables.

Example (two models with the same architecture):

    loaded = load_pretrained(target_model, source_model, ["embeddings", "towers"])
    target_model.fine_tuning = FineTuning(loaded, freeze_epochs={"embeddings": 2},
                                          l2sp=1e-3)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.config import TransferConfig
from tfmtl.content import CONTENT
from tfmtl.features import FeatureVocabulary
from tfmtl.layers.mixed_embedding import MixedDimensionEmbedding

logger = logging.getLogger("tfmtl")

COMPONENTS = ("embeddings", "towers", "experts", "heads")  # `transfer.components`


def variable_path(variable: tf.Variable) -> str:
  """The variable's name inside its model (without the model's own scope)."""
  return variable.name.split("/", 1)[1].split(":")[0]


def component_of(path: str) -> Optional[str]:
  """`embeddings`, `towers`, `experts`, `heads` or None (e.g. loss weights)."""
  parts = path.split("/")
  if parts[0] == "embedding_tables":  # model.tpu_embedding
    return "embeddings"
  if parts[0] in ("query_tower", "candidate_tower") and len(parts) > 2:
    if parts[1].endswith(("_embedding", "_adapter")) or parts[1:3] in (
        ["history", "item_embedding"], ["history", "item_vector_adapter"]):
      return "embeddings"
    return "towers"
  if parts[0] == "ranking" and len(parts) > 2:
    return "heads" if parts[1].endswith("_head") else "experts"
  if parts[0].endswith("_head"):
    return "heads"
  return None


def _block_ranges(model) -> dict[str, tuple[int, int]]:
  """The index range of each mixed-dimension id embedding block table, by path."""
  return {variable_path(table): (start, end)
          for layer in model.submodules if isinstance(layer, MixedDimensionEmbedding)
          for table, start, end in zip(layer.tables, layer.bounds, layer.bounds[1:])}


def _rows(path: str, vocabulary: FeatureVocabulary, block_ranges: dict[str, tuple[int, int]]
          ) -> Optional[list[str]]:
  """What each row of a vocabulary-indexed table stands for; None otherwise."""
  parts = path.split("/")
  layer = parts[1] if len(parts) > 1 else ""
  if layer in ("user_id_embedding", "item_id_embedding"):
    ids = ["<oov>", *(vocabulary.user_ids if layer == "user_id_embedding"
                      else vocabulary.item_ids)]
    if path in block_ranges:
      return ids[slice(*block_ranges[path])]
    return ids if parts[-1] in ("embeddings", layer) else None  # not a block's projection
  if parts[1:3] == ["history", "item_embedding"]:
    return ["<oov>", *vocabulary.item_ids]
  feature = layer[:-len("_embedding")] if layer.endswith("_embedding") else None
  if feature in vocabulary.tokens:
    return ["<oov>", *vocabulary.tokens[feature]]
  if feature in vocabulary.boundaries:  # a bucket is the same only under the same cuts
    cuts = vocabulary.boundaries[feature]
    return ["<missing>", *(f"{feature}:{i}:{cuts}" for i in range(len(cuts) + 1))]
  return None


def _tower_inputs(model) -> dict[str, list[str]]:
  """What each row of each tower's first dense kernel stands for, by path."""
  return {variable_path(tower.dense_layers[0].kernel):
          [f"{part}:{width}:{row}" for part, width in tower.input_widths for row in range(width)]
          for tower in (model.query_tower, model.candidate_tower)}


def _unread_feature(path: str, source) -> Optional[str]:
  """The feature whose embedding `path` is, if `source`'s tower does not read
  it; for the history's content adapter, `content` if `source`'s history
  does not read item content."""
  if path.split("/")[1:3] == ["history", "item_vector_adapter"]:  # model.sequence.content
    sequence = source.query_tower.sequence
    return None if sequence is not None and sequence.item_vectors is not None else CONTENT
  tower, layer = (path.split("/") + [""])[:2]
  feature = layer.rsplit("_", 1)[0] if layer.endswith(("_embedding", "_adapter")) else None
  if tower not in ("query_tower", "candidate_tower") or feature is None:
    return None
  read = {part for part, _ in getattr(source, tower).input_widths}
  return None if feature in read else feature


def load_pretrained(model, source, components: Sequence[str] = COMPONENTS
                    ) -> dict[str, tf.Tensor]:
  """Copies `source`'s weights of `components` into `model` (see module doc).

  Both are built `MultiTaskModel`s. Returns the loaded values by variable
  path (what L2-SP pulls toward).
  """
  unknown = set(components) - set(COMPONENTS)
  if unknown:
    raise ValueError(f"transfer.components: unknown {sorted(unknown)}; expected some of "
                     f"{list(COMPONENTS)}")
  sources = {variable_path(v): v for v in source.trainable_variables}
  target_blocks, source_blocks = _block_ranges(model), _block_ranges(source)
  target_inputs, source_inputs = _tower_inputs(model), _tower_inputs(source)
  loaded = {}
  for variable in model.trainable_variables:
    path = variable_path(variable)
    if component_of(path) not in components:
      continue
    if path not in sources:
      feature = _unread_feature(path, source)
      if feature is None:
        raise ValueError(f"transfer: variable {path!r} ({component_of(path)}) is not in the "
                         "pretrained model; leave its component out of transfer.components")
      logger.info("transfer: %s starts fresh: the pretrained model did not read %r",
                  path, feature)
      continue
    value = sources[path].numpy()
    target_rows = target_inputs.get(path) or _rows(path, model.vocabulary, target_blocks)
    if target_rows is not None:
      if value.shape[1:] != tuple(variable.shape[1:]):
        raise ValueError(f"transfer: variable {path!r} has shape {tuple(variable.shape)} here "
                         f"but {value.shape} in the pretrained model")
      source_rows = source_inputs.get(path) or _rows(path, source.vocabulary, source_blocks)
      positions = pd.Index(source_rows).get_indexer(target_rows)
      remapped = variable.numpy()
      known = positions >= 0
      remapped[known] = value[positions[known]]
      logger.info("transfer: %s keeps %d of %d rows", path, int(known.sum()), len(known))
      value = remapped
    elif value.shape != tuple(variable.shape):
      raise ValueError(f"transfer: variable {path!r} has shape {tuple(variable.shape)} here "
                       f"but {value.shape} in the pretrained model")
    variable.assign(value)
    loaded[path] = tf.constant(value)
  return loaded


@dataclasses.dataclass
class FineTuning:
  """How a model with pretrained variables trains (see module doc).

  Attributes:
    pretrained: the loaded values by variable path (`load_pretrained`).
    freeze_epochs: component -> number of first epochs it stays frozen
      (-1: always). Frozen variables get no update at all.
    learning_rate_scale: the pretrained variables' learning rate, as a
      fraction of the others' (their updates are scaled, whatever the
      optimizer).
    l2sp: strength of the L2-SP penalty.
  """
  pretrained: dict[str, tf.Tensor]
  freeze_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
  learning_rate_scale: float = 1.0
  l2sp: float = 0.0

  def __post_init__(self):
    unknown = set(self.freeze_epochs) - set(COMPONENTS)
    if unknown:
      raise ValueError(f"transfer.freeze_epochs: unknown component(s) {sorted(unknown)}; "
                       f"expected some of {list(COMPONENTS)}")
    self.trainable = {c: tf.Variable(0.0 if self.freeze_epochs.get(c, 0) else 1.0,
                                     trainable=False, name=f"{c}_trainable")
                      for c in COMPONENTS}

  def start_epoch(self, epoch: int) -> None:
    """Unfreezes the components whose frozen epochs are over."""
    for component, frozen in self.freeze_epochs.items():
      self.trainable[component].assign(0.0 if frozen < 0 or epoch < frozen else 1.0)

  def penalty(self, variables: Sequence[tf.Variable]) -> tf.Tensor:
    """The L2-SP term over the pretrained variables."""
    terms = [tf.reduce_sum(tf.square(v - self.pretrained[variable_path(v)]))
             for v in variables if variable_path(v) in self.pretrained]
    return 0.5 * self.l2sp * tf.add_n(terms) if terms and self.l2sp else tf.constant(0.0)

  def update_scales(self, variables: Sequence[tf.Variable]) -> dict[int, tf.Tensor]:
    """Update scale by position in `variables`, for those that may not take
    a full step: 0 while frozen, `learning_rate_scale` if pretrained."""
    scales = {}
    for position, variable in enumerate(variables):
      path = variable_path(variable)
      component = component_of(path)
      lr_scale = self.learning_rate_scale if path in self.pretrained else 1.0
      if self.freeze_epochs.get(component, 0) or lr_scale != 1.0:
        scales[position] = self.trainable[component] * lr_scale
    return scales


class FineTuningCallback(keras.callbacks.Callback):
  """Moves a `FineTuning`'s freezing schedule along, epoch by epoch."""

  def __init__(self, fine_tuning: FineTuning):
    super().__init__()
    self.fine_tuning = fine_tuning

  def on_epoch_begin(self, epoch, logs=None):
    self.fine_tuning.start_epoch(epoch)


def fine_tune_from(model, source, config: TransferConfig) -> FineTuning:
  """Loads `source` into `model` and sets how it fine-tunes, from a config."""
  model.create_variables()
  loaded = load_pretrained(model, source, config.components)
  model.fine_tuning = FineTuning(loaded, dict(config.freeze_epochs),
                                 config.learning_rate_scale, config.l2sp)
  return model.fine_tuning
