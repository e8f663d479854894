"""Mixed precision: Keras dtype policies, set where layers are created.

`train.precision: mixed_float16` (GPUs) or `mixed_bfloat16` (TPUs, CPUs with
bfloat16 instructions) builds the model's layers under that Keras policy:
they compute in 16 bits and keep float32 weights. What must stay exact stays
float32: the towers' output embeddings (and so the retrieval scores and the
exported candidate matrix), the heads' logits, and the tasks' losses. Under
`mixed_float16` Keras wraps the optimizer in a `LossScaleOptimizer`, and the
model's train step scales the loss and unscales the gradients.

A Keras user gets the same by setting the global policy before building the
model, as Keras' mixed-precision guide does.

Example:

>>> import tf_keras as keras
>>> with dtype_policy("mixed_bfloat16"):
...   layer = keras.layers.Dense(4)
>>> layer.compute_dtype, layer.dtype, keras.mixed_precision.global_policy().name
('bfloat16', 'float32', 'float32')
"""

from __future__ import annotations

import contextlib

import tf_keras as keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # `train.precision`


@contextlib.contextmanager
def dtype_policy(name: str):
  """Keras' global dtype policy set to `name` inside the block, then restored
  (a layer takes the policy in force when it is created)."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)
