"""The one MLP building block the towers, blocks and heads share."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras


def dense_stack(widths: Sequence[int], name: str,
                kernel_regularizer=None) -> list[keras.layers.Layer]:
  """ReLU Dense layers named `<name>_0`, `<name>_1`, ..."""
  return [keras.layers.Dense(width, activation="relu", kernel_regularizer=kernel_regularizer,
                             name=f"{name}_{i}")
          for i, width in enumerate(widths)]


def apply_stack(layers: Sequence[keras.layers.Layer], inputs: tf.Tensor) -> tf.Tensor:
  """Applies `layers` in order."""
  for layer in layers:
    inputs = layer(inputs)
  return inputs
