"""The config section of one task; the task types themselves (their rules
included) are `tfmtl.tasks`."""

from __future__ import annotations

import dataclasses
from typing import Optional

from pydantic import StrictBool

from tfmtl.config.section import Section, check_widths
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class TaskConfig(Section):
  """One task of the multi-task model.

  Ranking tasks (`regression`, `binary`, `implicit`) read the (query,
  candidate) pair through the ranking heads; `classification`,
  `reconstruction` and `autoencoder` tasks read one tower's embedding.

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
      the history is also the input) or `autoencoder` (decode an item feature
      the candidate tower reads from the candidate embedding, its
      bottleneck).
    weight: weight of the task's loss in the total loss.
    label: interaction column (regression, binary) or feature
      (classification, reconstruction, autoencoder) the task predicts.
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
  logq_correction: StrictBool = True
  remove_accidental_hits: StrictBool = True
  cross_replica_negatives: StrictBool = True
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
    check_widths("layers", self.layers)
    task_type.check_config(self)


def default_tasks() -> dict[str, TaskConfig]:
  """Retrieval, rating regression and like (rating >= 4) classification."""
  return {
      "retrieval": TaskConfig(type="retrieval", temperature=0.1),
      "rating": TaskConfig(type="regression", label="rating"),
      "like": TaskConfig(type="binary", label="rating", threshold=4.0, weight=0.5),
  }


def history_length(model, tasks: dict[str, TaskConfig]) -> int:
  """Length of the `history` feature: 0 unless `model`'s (a `ModelConfig`)
  sequence tower or a reconstruction task reads it."""
  if model.sequence.type == "none" and not any(
      _task_type(task.type).reads_history for task in tasks.values()):
    return 0
  return model.sequence.length


def _task_type(name: str):
  """The class of task type `name` (`tfmtl.tasks`, which imports this
  module, owns the types)."""
  from tfmtl.tasks import task_type  # pylint: disable=import-outside-toplevel
  return task_type(name)
