"""Config sections of what follows training: evaluation, the export and its
index, and hyperparameter search."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from tfmtl.config.section import Section, one_of
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class EvaluateConfig(Section):
  """Full-catalogue evaluation.

  Attributes:
    ks: cut-offs of Recall/NDCG/MRR/Hit@k and top-k accuracy.
    batch_size: users scored against the whole catalogue per batch (and
      test interactions per batch for the ranking tasks), in every
      evaluation: `tfmtl evaluate`, the per-epoch validation metrics,
      tuning trials and the popularity baseline.
    ease_lambda: L2 strength of the EASE baseline (Steck 2019), shown beside
      popularity by `tfmtl evaluate` and `tfmtl run`.
    ease_max_items: the largest catalogue EASE is fitted for (its item-item
      inverse grows with the cube of the items; 0: never); it is also
      skipped, with a line saying so, when its matrices would not fit in
      half the memory available.
  """
  ks: list[int] = dataclasses.field(default_factory=lambda: [10, 50, 100])
  batch_size: int = 512
  ease_lambda: float = 250.0
  ease_max_items: int = 20_000

  def _validate(self):
    if not self.ks or min(self.ks) < 1:
      raise ConfigError("ks: must be positive cut-offs")
    if self.batch_size < 1:
      raise ConfigError("batch_size: must be positive")
    if self.ease_lambda <= 0 or self.ease_max_items < 0:
      raise ConfigError("ease_lambda, ease_max_items: must be positive (ease_max_items 0: "
                        "no EASE baseline)")


@dataclasses.dataclass
class PartitionedConfig(Section):
  """Options of the partitioned index (`export.index: partitioned`;
  `tfmtl.serving.index.PartitionedIndex`). 0 picks a value from the
  catalogue's size (`tfmtl.serving.index.partitioned_parameters`).

  Attributes:
    partitions: k-means clusters of the candidate embeddings (0: eight times
      the square root of the number of items).
    nprobe: the partitions whose items a query scores, those whose best
      item is likely to score highest first (`PartitionedIndex`; 0: a
      fortieth of the partitions, and at least those that hold 800 items
      on average).
    quantization: how the partitions store item vectors: `none` (float32),
      `bfloat16` (also scored in bfloat16: for CPUs with bfloat16
      arithmetic) or `int8` (a scale per dimension); a quantized index
      re-scores its best `rescore` items exactly (float32) before the top k.
    rescore: the items a quantized index re-scores exactly (0: 4 times the
      items a request asks for, at least 400).
    seed: k-means' seed (the index is the same for a seed).
  """
  partitions: int = 0
  nprobe: int = 0
  quantization: str = "none"
  rescore: int = 0
  seed: int = 0

  def _validate(self):
    from tfmtl.serving.index import QUANTIZATIONS  # pylint: disable=import-outside-toplevel
    if self.partitions < 0 or self.nprobe < 0 or self.rescore < 0:
      raise ConfigError("partitions, nprobe, rescore: must be non-negative (0: from the "
                        "catalogue's size)")
    one_of("quantization", self.quantization, QUANTIZATIONS)


@dataclasses.dataclass
class ScannConfig(Section):
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
class ExportConfig(Section):
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
      items: `brute_force` (exact; stock TF Serving serves it),
      `partitioned` (approximate, k-means partitions; standard TensorFlow
      ops, so stock TF Serving serves it too) or `scann` (approximate;
      needs the `scann` extra, TensorFlow 2.20, and a TF Serving build with
      ScaNN's ops).
    partitioned: the partitioned index's options.
    scann: the ScaNN index's options.
    min_recall: `tfmtl validate` fails an approximate index (`partitioned`,
      `scann`) whose recall@100 against brute force, for the warm-up
      requests' users, is below this.
  """
  base_path: str = "saved_models"
  top_k: int = 100
  recommend_candidates: int = 100
  recommend_weights: dict[str, float] = dataclasses.field(default_factory=dict)
  keep_versions: int = 0
  index: str = "brute_force"
  partitioned: PartitionedConfig = dataclasses.field(default_factory=PartitionedConfig)
  scann: ScannConfig = dataclasses.field(default_factory=ScannConfig)
  min_recall: float = 0.9

  def _validate(self):
    from tfmtl.serving.index import INDEXES  # pylint: disable=import-outside-toplevel
    one_of("index", self.index, INDEXES)
    if self.top_k < 1 or self.recommend_candidates < 1:
      raise ConfigError("top_k, recommend_candidates: must be at least 1")
    if self.keep_versions < 0:
      raise ConfigError("keep_versions: must be non-negative (0 keeps every version)")
    if not 0 <= self.min_recall <= 1:
      raise ConfigError("min_recall: must be between 0 and 1")


@dataclasses.dataclass
class TuneConfig(Section):
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
    one_of("algorithm", self.algorithm, ("random", "bayesian", "hyperband"))
    if self.direction:
      one_of("direction", self.direction, ("max", "min"))
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
