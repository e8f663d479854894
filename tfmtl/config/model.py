"""Config sections of the model: the towers, what the ranking tasks share,
how their losses add up and the user's recent items."""

from __future__ import annotations

import dataclasses

from pydantic import StrictBool

from tfmtl.config.section import Section, check_widths, one_of
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class MultiTaskConfig(Section):
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
    coupling: strength lambda of the task-coupling penalty
      `lambda * sum over pairs of Omega(head_i, head_j)`, which keeps the
      heads of related ranking tasks close (0: off; `RankingHeads.coupling`).
    coupling_pairs: the task pairs it couples, e.g. `[[rating, like]]`
      (empty: every pair of ranking tasks); a pair's heads have the same
      layers.
    coupling_distance: Omega: `squared` (the summed squared differences of
      the heads' same-shaped weights) or `cosine` (1 - the cosine of the
      heads' weights, each head's flattened into one vector).
    per_domain: with `data.domain_column`, what each domain has of its own:
      `heads` (each ranking task's head, per domain), `shared_heads` (a
      head per domain added to one all domains share: each domain's head
      learns its difference) or `gates` (`mmoe` and `ple`: each task's
      gates over the experts, per domain); the rest is shared
      (`tfmtl.layers.domains`).
  """
  type: str = "independent"
  layers: list[int] = dataclasses.field(default_factory=list)
  num_experts: int = 4
  num_task_experts: int = 2
  num_shared_experts: int = 2
  num_levels: int = 1
  cross_layers: int = 0
  coupling: float = 0.0
  coupling_pairs: list[list[str]] = dataclasses.field(default_factory=list)
  coupling_distance: str = "squared"
  per_domain: str = "heads"

  def _validate(self):
    from tfmtl.layers.multitask import BLOCKS  # pylint: disable=import-outside-toplevel
    one_of("type", self.type, BLOCKS)
    one_of("coupling_distance", self.coupling_distance, ("squared", "cosine"))
    one_of("per_domain", self.per_domain, ("heads", "shared_heads", "gates"))
    if self.per_domain == "gates" and self.type not in ("mmoe", "ple"):
      raise ConfigError(f"per_domain: gates needs a gated block (type mmoe or ple), "
                        f"not {self.type!r}")
    if self.coupling < 0:
      raise ConfigError("coupling: must be non-negative (0: off)")
    if any(len(pair) != 2 or pair[0] == pair[1] for pair in self.coupling_pairs):
      raise ConfigError(f"coupling_pairs: {self.coupling_pairs} must list pairs of two "
                        "different tasks, e.g. [[rating, like]]")
    check_widths("layers", self.layers)
    if self.cross_layers < 0:
      raise ConfigError("cross_layers: must be non-negative")
    if self.type in ("shared_bottom", "mmoe", "ple") and not self.layers:
      raise ConfigError(f"layers: a {self.type} block needs at least one layer")
    if min(self.num_experts, self.num_task_experts, self.num_levels) < 1 or \
        self.num_shared_experts < 0:
      raise ConfigError("num_experts, num_task_experts and num_levels must be at least 1, "
                        "num_shared_experts at least 0")


@dataclasses.dataclass
class LossWeightingConfig(Section):
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
    from tfmtl.weighting import SCHEMES  # pylint: disable=import-outside-toplevel
    one_of("type", self.type, SCHEMES)
    if self.temperature <= 0:
      raise ConfigError("temperature: must be positive")


@dataclasses.dataclass
class SequenceConfig(Section):
  """The query tower's view of the user's recent items (the `history` feature).

  Attributes:
    type: `none`, `mean` (the average item embedding, order-free), `gru`
      or `lstm` (a GRU or an LSTM over the items, oldest to newest) or
      `attention` (attention pooling with a learned recency embedding).
    length: number of most recent earlier training interactions used; only
      interactions strictly before an example's timestamp are ever used.
    content: each history item also reads its item content vector (the
      `content` feature of `content.encoder`, pretrained or fine-tuned)
      through a trainable adapter: the items' text on the query side.
  """
  type: str = "none"
  length: int = 20
  content: bool = False

  def _validate(self):
    from tfmtl.layers.sequence import POOLINGS  # pylint: disable=import-outside-toplevel
    one_of("type", self.type, ("none",) + POOLINGS)
    if self.content and self.type == "none":
      raise ConfigError("content: the history reads item content only with a type "
                        f"({', '.join(POOLINGS)})")
    if self.length < 1:
      raise ConfigError("length: must be at least 1")


@dataclasses.dataclass
class EmbeddingBlock(Section):
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
class ModelConfig(Section):
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
    l2, l1: L2 and L1 penalties on the id embeddings.
    tower_l2, tower_l1: L2 and L1 penalties on the towers' dense kernels.
    tpu_embedding: keep the id tables and the categorical and bucketized
      features' tables (both towers') in one TFRS `TPUEmbedding` layer
      (`tfmtl.layers.EmbeddingTables`): on a TPU its embedding engine
      shards them over the cores and updates them with `train.optimizer`;
      elsewhere they are ordinary variables (checkpoints move between
      both). Not with `id_embedding_blocks`, `l2` or `l1`.
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
  normalize_embeddings: StrictBool = True
  l2: float = 0.0
  l1: float = 0.0
  tower_l2: float = 0.0
  tower_l1: float = 0.0
  tpu_embedding: StrictBool = False
  multitask: MultiTaskConfig = dataclasses.field(default_factory=MultiTaskConfig)
  loss_weighting: LossWeightingConfig = dataclasses.field(
      default_factory=LossWeightingConfig)
  sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)

  def _validate(self):
    for name in ("embedding_dim", "id_embedding_dim", "feature_embedding_dim"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name}: must be at least 1")
    check_widths("tower_layers", self.tower_layers)
    for name in ("l2", "l1", "tower_l2", "tower_l1"):
      if getattr(self, name) < 0:
        raise ConfigError(f"{name}: must be non-negative")
    if self.tpu_embedding and (self.id_embedding_blocks or self.l2 or self.l1):
      raise ConfigError("tpu_embedding: the TPU embedding engine holds plain tables without "
                        "a weight penalty: set id_embedding_blocks: {}, l2: 0 and l1: 0")
    for feature, blocks in self.id_embedding_blocks.items():
      one_of("id_embedding_blocks", feature, ("user_id", "item_id"), what="id feature")
      shares = sum(block.share for block in blocks)
      if abs(shares - 1.0) > 1e-6:
        raise ConfigError(f"id_embedding_blocks.{feature}: the shares must sum to 1, "
                          f"got {shares:g}")
