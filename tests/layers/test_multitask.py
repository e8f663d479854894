"""Multi-task blocks: shapes, where each task's gradient flows, gates sum to 1."""

import numpy as np
import pytest
import tensorflow as tf

from tfmtl.layers import MMoE, PLE, Independent, SharedBottom

TASKS = ["rating", "like"]
BLOCKS = {
    "shared_bottom": lambda: SharedBottom(TASKS, [8], name="block"),
    "independent": lambda: Independent(TASKS, [8], name="block"),
    "mmoe": lambda: MMoE(TASKS, num_experts=3, expert_layers=[8], name="block"),
    "ple": lambda: PLE(TASKS, 2, 1, [8], num_levels=1, name="block"),
    "ple_2_levels": lambda: PLE(TASKS, 2, 1, [8], num_levels=2, name="block"),
}
INPUTS = tf.random.stateless_normal([5, 6], seed=[1, 2])


@pytest.mark.parametrize("name", BLOCKS)
def test_one_output_per_task_of_the_last_layer_width(name):
  outputs = BLOCKS[name]()(INPUTS)
  assert sorted(outputs) == sorted(TASKS)
  assert all(output.shape == (5, 8) for output in outputs.values())


def test_independent_without_layers_passes_the_input_through():
  outputs = Independent(TASKS, [])(INPUTS)
  assert all(np.array_equal(output, INPUTS) for output in outputs.values())


def _trained_by(block, task):
  """Names of the variables that `task`'s output sends a gradient to."""
  block(INPUTS)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(block(INPUTS)[task] ** 2)
  gradients = tape.gradient(loss, block.trainable_variables)
  return {v.name for v, g in zip(block.trainable_variables, gradients)
          if g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0}


@pytest.mark.parametrize("name", BLOCKS)
def test_every_variable_is_trained_by_some_task(name):
  block = BLOCKS[name]()
  trained = set().union(*(_trained_by(block, task) for task in TASKS))
  assert trained == {v.name for v in block.trainable_variables}


def test_shared_bottom_shares_everything():
  block = BLOCKS["shared_bottom"]()
  assert _trained_by(block, "rating") == _trained_by(block, "like")


def test_independent_shares_nothing():
  block = BLOCKS["independent"]()
  assert not _trained_by(block, "rating") & _trained_by(block, "like")


def test_mmoe_shares_experts_but_not_gates():
  block = BLOCKS["mmoe"]()
  rating, like = _trained_by(block, "rating"), _trained_by(block, "like")
  assert all("expert" in name for name in rating & like)
  assert any("rating_gate" in name for name in rating - like)


def test_ple_shares_only_the_shared_experts():
  block = BLOCKS["ple"]()
  rating, like = _trained_by(block, "rating"), _trained_by(block, "like")
  assert rating & like and all("shared_expert" in name for name in rating & like)
  assert any("rating_expert" in name for name in rating - like)


@pytest.mark.parametrize("name", ["mmoe", "ple", "ple_2_levels"])
def test_gates_are_distributions_over_experts(name):
  gates = BLOCKS[name]().gates(INPUTS)
  assert sorted(gates) == sorted(TASKS)
  for weights in gates.values():
    assert (weights.numpy() >= 0).all()
    np.testing.assert_allclose(tf.reduce_sum(weights, axis=-1), 1.0, rtol=1e-6)
