"""Multi-task blocks: one shared input -> one representation per task.

They sit between the shared two-tower embeddings and the ranking heads, and
decide what the tasks share:

- `SharedBottom`: one MLP whose output every task reads.
- `Independent`: an MLP per task, nothing shared (no layers: each head reads
  the input itself).
- `MMoE` (Ma et al. 2018): shared experts mixed by a softmax gate per task.
- `PLE` (Tang et al. 2020): levels of CGC, each with task-specific and
  shared experts; a task's gate mixes its own and the shared experts.

Every block maps a [batch, d] tensor to `{task: [batch, d_task]}`; the gated
ones also expose their gate weights (`block.gates(inputs)`), which sum to 1,
and with `num_domains` have a gate per domain (`tfmtl.layers.domains`): a
block's `domains` argument is each row's domain index.

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers import MMoE
>>> block = MMoE(["rating", "like"], num_experts=3, expert_layers=[8])
>>> outputs = block(tf.ones([4, 16]))
>>> sorted(outputs), outputs["rating"].shape
(['like', 'rating'], TensorShape([4, 8]))
>>> round(float(tf.reduce_sum(block.gates(tf.ones([1, 16]))["like"])), 5)
1.0
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from tfmtl.layers.domains import DomainGate
from tfmtl.layers.mlp import apply_stack, dense_stack


class SharedBottom(keras.layers.Layer):
  """One MLP shared by every task.

  Args:
    tasks: task names.
    layers: hidden widths of the shared MLP.
  """

  def __init__(self, tasks: Sequence[str], layers: Sequence[int] = (64,), **kwargs):
    super().__init__(**kwargs)
    self.task_names = list(tasks)
    self.bottom = dense_stack(layers, "shared")

  def call(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    shared = apply_stack(self.bottom, inputs)
    return {task: shared for task in self.task_names}


class Independent(keras.layers.Layer):
  """One MLP per task; with no layers each task reads the input as is.

  Args:
    tasks: task names.
    layers: hidden widths of each task's MLP.
  """

  def __init__(self, tasks: Sequence[str], layers: Sequence[int] = (), **kwargs):
    super().__init__(**kwargs)
    self.towers = {task: dense_stack(layers, f"{task}_tower") for task in tasks}

  def call(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    return {task: apply_stack(layers, inputs) for task, layers in self.towers.items()}


class MMoE(keras.layers.Layer):
  """Multi-gate mixture of experts.

  Args:
    tasks: task names.
    num_experts: number of shared experts.
    expert_layers: hidden widths of each expert MLP.
    num_domains: > 0: each task has a gate per domain.
  """

  def __init__(self, tasks: Sequence[str], num_experts: int = 4,
               expert_layers: Sequence[int] = (64,), num_domains: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.experts = [dense_stack(expert_layers, f"expert_{e}") for e in range(num_experts)]
    self.gate_layers = {task: DomainGate(num_experts, num_domains, name=f"{task}_gate")
                        for task in tasks}

  def gates(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Each task's weights over the experts, [batch, num_experts]."""
    return {task: gate(inputs, domains) for task, gate in self.gate_layers.items()}

  def call(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    experts = tf.stack([apply_stack(e, inputs) for e in self.experts], axis=1)  # [b, e, d]
    return {task: tf.einsum("be,bed->bd", weights, experts)
            for task, weights in self.gates(inputs, domains).items()}


class PLE(keras.layers.Layer):
  """Progressive layered extraction: stacked CGC levels.

  Args:
    tasks: task names.
    num_task_experts: experts owned by each task, per level.
    num_shared_experts: experts shared by all tasks, per level.
    expert_layers: hidden widths of each expert MLP.
    num_levels: number of CGC levels (1 is CGC itself).
    num_domains: > 0: each gate is one per domain.
  """

  def __init__(self, tasks: Sequence[str], num_task_experts: int = 2,
               num_shared_experts: int = 2, expert_layers: Sequence[int] = (64,),
               num_levels: int = 1, num_domains: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.task_names = list(tasks)
    self.levels = []
    for level in range(num_levels):
      last = level == num_levels - 1
      owners = self.task_names + ["shared"]
      self.levels.append({
          "experts": {owner: [dense_stack(expert_layers, f"l{level}_{owner}_expert_{e}")
                              for e in range(num_shared_experts if owner == "shared"
                                             else num_task_experts)]
                      for owner in owners},
          # Tasks mix their own and the shared experts; the shared gate (which
          # feeds the next level) mixes every expert.
          "gates": {owner: DomainGate(
              num_task_experts * len(self.task_names) + num_shared_experts
              if owner == "shared" else num_task_experts + num_shared_experts,
              num_domains, name=f"l{level}_{owner}_gate")
                    for owner in (self.task_names if last else owners)},
      })

  def _level(self, level: dict, inputs: dict[str, tf.Tensor], domains):
    """One CGC level: (outputs, gate weights), both by owner."""
    outputs, weights = {}, {}
    experts = {owner: [apply_stack(e, inputs[owner]) for e in expert_list]
               for owner, expert_list in level["experts"].items()}
    for owner, gate in level["gates"].items():
      chosen = (sum((experts[t] for t in self.task_names), []) + experts["shared"]
                if owner == "shared" else experts[owner] + experts["shared"])
      weights[owner] = gate(inputs[owner], domains)
      outputs[owner] = tf.einsum("be,bed->bd", weights[owner], tf.stack(chosen, axis=1))
    return outputs, weights

  def _forward(self, inputs: tf.Tensor, domains):
    """The last level's (outputs, gate weights)."""
    states = {owner: inputs for owner in self.task_names + ["shared"]}
    for level in self.levels:
      states, weights = self._level(level, states, domains)
    return states, weights

  def gates(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Each task's weights over its and the shared experts at the last level."""
    return self._forward(inputs, domains)[1]

  def call(self, inputs: tf.Tensor, domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    return self._forward(inputs, domains)[0]


BLOCKS = ("independent", "shared_bottom", "mmoe", "ple")  # `model.multitask.type`


def make_block(config, tasks: Sequence[str], num_domains: int = 0) -> keras.layers.Layer:
  """The block a `MultiTaskConfig` names, for `tasks` (with `num_domains`
  and `per_domain: gates`, a gated block's gates are per domain)."""
  gate_domains = num_domains if config.per_domain == "gates" else 0
  if config.type == "shared_bottom":
    return SharedBottom(tasks, config.layers, name="shared_bottom")
  if config.type == "mmoe":
    return MMoE(tasks, config.num_experts, config.layers, gate_domains, name="mmoe")
  if config.type == "ple":
    return PLE(tasks, config.num_task_experts, config.num_shared_experts, config.layers,
               config.num_levels, gate_domains, name="ple")
  return Independent(tasks, config.layers, name="independent")
