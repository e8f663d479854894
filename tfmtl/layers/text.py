"""The top layers of a pretrained BERT-family text encoder, as tf_keras layers.

A `TransformerBlock` is one BERT encoder layer (self-attention, then a
feed-forward network, each added to its input and layer-normalised after),
whose weights load from a keras-hub `TransformerEncoder`
(`load_keras_hub`). A `TextHead` runs the top blocks over the token states
the encoder's frozen lower layers computed (`TextEncoder.lower_states`,
computed once per text), then mean-pools over the text's tokens and
L2-normalises: with the pretrained weights, the vector `TextEncoder.encode`
gives; fine-tuned, the text tower of `tfmtl.text_tuning`. Being tf_keras
layers, they train with any Keras optimizer and save in a tf_keras model;
`TransformerBlock.adapt_low_rank` trains low-rank updates of the attention
projections instead of the block's weights (LoRA).

Example (random weights; `TextEncoder.top_blocks` gives pretrained ones):

>>> import tensorflow as tf
>>> from tfmtl.layers.text import TextHead, TransformerBlock
>>> head = TextHead([TransformerBlock(num_heads=2, intermediate_dim=16)])
>>> states, padding_mask = tf.random.normal([3, 5, 8]), tf.sequence_mask([5, 2, 4], 5)
>>> head(states, padding_mask).shape
TensorShape([3, 8])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras


def _gelu(x: tf.Tensor) -> tf.Tensor:
  return keras.activations.gelu(x, approximate=True)  # as keras-hub's BERT


class TransformerBlock(keras.layers.Layer):
  """One BERT encoder layer (module doc): [batch, tokens, hidden] states and
  a [batch, tokens] padding mask (true: a token of the text) -> new states.

  Args:
    num_heads: attention heads (the hidden width divides into them).
    intermediate_dim: the feed-forward network's inner width.
    dropout: dropout rate after attention and after the feed-forward network
      (and on the attention weights), in training only.
    epsilon: the layer norms' epsilon.
  """

  def __init__(self, num_heads: int, intermediate_dim: int, dropout: float = 0.0,
               epsilon: float = 1e-12, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.intermediate_dim = intermediate_dim
    self.rate = dropout
    self.epsilon = epsilon

  def build(self, input_shape):
    hidden = int(input_shape[-1])
    self.attention = keras.layers.MultiHeadAttention(
        self.num_heads, hidden // self.num_heads, dropout=self.rate, name="self_attention")
    self.attention_norm = keras.layers.LayerNormalization(epsilon=self.epsilon,
                                                          name="self_attention_norm")
    self.intermediate = keras.layers.Dense(self.intermediate_dim, activation=_gelu,
                                           name="intermediate")
    self.feedforward = keras.layers.Dense(hidden, name="feedforward")
    self.feedforward_norm = keras.layers.LayerNormalization(epsilon=self.epsilon,
                                                            name="feedforward_norm")
    self.dropout = keras.layers.Dropout(self.rate)
    super().build(input_shape)

  def call(self, states: tf.Tensor, padding_mask: tf.Tensor, training=None) -> tf.Tensor:
    keys = tf.cast(padding_mask, tf.bool)[:, None, :]  # every token attends to the text's
    attended = self.attention(states, states, attention_mask=keys, training=training)
    states = self.attention_norm(states + self.dropout(attended, training=training))
    fed = self.feedforward(self.intermediate(states))
    return self.feedforward_norm(states + self.dropout(fed, training=training))

  def adapt_low_rank(self, rank: int) -> None:
    """Freezes the block and adds LoRA updates of `rank` to its attention's
    query and value projections (`LowRankAdapter`): they alone train."""
    for layer in (self.attention._key_dense, self.attention._output_dense,
                  self.attention_norm, self.intermediate, self.feedforward, self.feedforward_norm):
      layer.trainable = False
    for projection in ("_query_dense", "_value_dense"):
      setattr(self.attention, projection,
              LowRankAdapter(getattr(self.attention, projection), rank))

  def load_keras_hub(self, layer) -> None:
    """Takes the weights of keras-hub's `TransformerEncoder` `layer`
    (post-norm, as BERT's); builds this block first if needed."""
    if not self.built:
      hidden = int(layer._self_attention_layer_norm.gamma.shape[0])
      self(tf.zeros([1, 1, hidden]), tf.ones([1, 1], tf.bool))
    theirs = layer._self_attention_layer
    pairs = [(self.attention._query_dense, theirs._query_dense),
             (self.attention._key_dense, theirs._key_dense),
             (self.attention._value_dense, theirs._value_dense),
             (self.attention._output_dense, theirs._output_dense),
             (self.attention_norm, layer._self_attention_layer_norm),
             (self.intermediate, layer._feedforward_intermediate_dense),
             (self.feedforward, layer._feedforward_output_dense),
             (self.feedforward_norm, layer._feedforward_layer_norm)]
    for mine, pretrained in pairs:
      mine.set_weights([np.asarray(weight) for weight in pretrained.get_weights()])


class TextEmbeddings(keras.layers.Layer):
  """BERT's input embeddings: token + position + segment 0, layer-normalised:
  [batch, tokens] token ids -> [batch, tokens, hidden] states, the input of
  the first `TransformerBlock` (weights from keras-hub: `load_keras_hub`).

  Args:
    vocabulary_size, hidden, max_positions: the table sizes.
    epsilon: the layer norm's epsilon.
  """

  def __init__(self, vocabulary_size: int, hidden: int, max_positions: int,
               epsilon: float = 1e-12, **kwargs):
    super().__init__(**kwargs)
    self.tokens = keras.layers.Embedding(vocabulary_size, hidden, name="token_embedding")
    self.positions = self.add_weight("position_embedding", [max_positions, hidden],
                                     trainable=False)
    self.segment = self.add_weight("segment_embedding", [hidden], trainable=False)
    self.norm = keras.layers.LayerNormalization(epsilon=epsilon, name="embeddings_norm")

  def call(self, token_ids: tf.Tensor) -> tf.Tensor:
    length = tf.shape(token_ids)[1]
    return self.norm(self.tokens(token_ids) + self.positions[None, :length] + self.segment)

  def load_keras_hub(self, backbone) -> None:
    """Takes the embedding weights of keras-hub's BERT `backbone`."""
    token_ids = tf.zeros([1, 1], tf.int32)
    self(token_ids)
    self.tokens.set_weights([np.asarray(backbone.token_embedding.weights[0])])
    self.positions.assign(np.asarray(backbone.position_embedding.weights[0]))
    self.segment.assign(np.asarray(backbone.segment_embedding.weights[0])[0])
    self.norm.set_weights([np.asarray(w) for w in backbone.embeddings_layer_norm.get_weights()])


class LowRankAdapter(keras.layers.Layer):
  """A frozen `EinsumDense` projection plus a trainable low-rank update
  (LoRA, Hu et al. 2021): `base(x) + scale * (x A) B`, A [in, rank] random,
  B [rank, *out] zero, so it starts as `base`."""

  def __init__(self, base: keras.layers.EinsumDense, rank: int, alpha: float = 8.0,
               **kwargs):
    super().__init__(name=f"{base.name}_lora", **kwargs)
    self.base = base
    self.base.trainable = False
    inputs, outputs = int(base.kernel.shape[0]), list(base.kernel.shape[1:])
    self.down = self.add_weight("down", [inputs, rank],
                                initializer=keras.initializers.HeUniform())
    self.up = self.add_weight("up", [rank, *outputs], initializer="zeros")
    self.scale = alpha / rank

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    update = tf.tensordot(tf.tensordot(inputs, self.down, 1), self.up, 1)
    return self.base(inputs) + self.scale * update


class TextHead(keras.layers.Layer):
  """`blocks` over cached lower-layer states, then the mean over the text's
  tokens, L2-normalised: [batch, tokens, hidden] -> [batch, hidden]."""

  def __init__(self, blocks: Sequence[TransformerBlock], **kwargs):
    super().__init__(**kwargs)
    self.blocks = list(blocks)

  def call(self, states: tf.Tensor, padding_mask: tf.Tensor, training=None) -> tf.Tensor:
    for block in self.blocks:
      states = block(states, padding_mask, training=training)
    weights = tf.cast(padding_mask, states.dtype)[..., None]
    pooled = tf.reduce_sum(states * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
    return tf.math.l2_normalize(pooled, axis=-1)
