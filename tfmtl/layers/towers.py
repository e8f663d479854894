"""The two towers: an entity's id and features -> one embedding.

A `FeatureTower` embeds an id (user or item) and each encoded feature, joins
them and maps them through a small MLP to the shared embedding space. The
query tower is a `FeatureTower` over the user id, user features and,
optionally, the user's recent items pooled by a `SequencePooling`; the
candidate tower one over the item id and item features. With `tables` (a
model-level `EmbeddingTables`), the id and the categorical features are
rows of those shared tables: given to `call` as `rows`, or looked up there.

Example:

>>> import tensorflow as tf
>>> from tfmtl.config import FeatureConfig
>>> from tfmtl.layers import FeatureTower
>>> tower = FeatureTower("item_id", {"item_id": 10, "genres": 5},
...                      {"genres": FeatureConfig("multi_categorical")},
...                      embedding_dim=16)
>>> tower({"item_id": tf.constant([1, 2]), "genres": tf.ones([2, 5])}).shape
TensorShape([2, 16])
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmtl.config import FeatureConfig
from tfmtl.data.schema import HISTORY
from tfmtl.layers.embedding_tables import EmbeddingTables
from tfmtl.layers.mixed_embedding import MixedDimensionEmbedding
from tfmtl.layers.mlp import apply_stack, dense_stack
from tfmtl.layers.sequence import SequencePooling


class FeatureTower(keras.layers.Layer):
  """Id + features -> embedding (see module doc): float32, whatever the
  layers compute in (`tfmtl.precision`).

  Args:
    id_feature: name of the id feature (`user_id` or `item_id`).
    sizes: number of indices of the id and of each feature (OOV included).
    features: the features to embed, with their encoding.
    embedding_dim: output width.
    id_embedding_dim, feature_embedding_dim: widths of the input embeddings.
    id_embedding_blocks: (share of the ids, width) blocks of a
      `MixedDimensionEmbedding` for the id; empty: one plain table.
    hidden_layers: widths of the hidden ReLU layers.
    l2, l1: L2 and L1 penalties on the id embedding.
    dense_l2, dense_l1: L2 and L1 penalties on the dense layers' kernels.
    normalize: L2-normalise the output (dot products become cosines).
    sequence: pools the `history` feature into the tower's input (optional).
    tables: holds the id's and the categorical features' tables (optional;
      see module doc); `id_embedding_blocks`, `l2` and `l1` then do not apply.
  """

  def __init__(self, id_feature: str, sizes: dict[str, int],
               features: dict[str, FeatureConfig], embedding_dim: int = 32,
               id_embedding_dim: int = 32, feature_embedding_dim: int = 8,
               id_embedding_blocks: Sequence[tuple[float, int]] = (),
               hidden_layers: Sequence[int] = (64,), l2: float = 0.0, l1: float = 0.0,
               dense_l2: float = 0.0, dense_l1: float = 0.0,
               normalize: bool = True, sequence: Optional[SequencePooling] = None,
               tables: Optional[EmbeddingTables] = None, **kwargs):
    super().__init__(**kwargs)
    self.id_feature = id_feature
    self.sequence = sequence
    self.normalize = normalize
    self.features = dict(features)
    self.tables = tables
    self.looked_up = self.table_features(id_feature, self.features) if tables else []
    regularizer = keras.regularizers.L1L2(l1, l2) if l1 or l2 else None
    self.id_embedding = (
        None if tables else
        MixedDimensionEmbedding(sizes[id_feature], id_embedding_dim, id_embedding_blocks,
                                embeddings_regularizer=regularizer,
                                name=f"{id_feature}_embedding")
        if id_embedding_blocks else
        keras.layers.Embedding(sizes[id_feature], id_embedding_dim,
                               embeddings_regularizer=regularizer,
                               name=f"{id_feature}_embedding"))
    self.feature_embeddings = {
        # A multi-hot vector times a matrix is the sum of its tokens' embeddings;
        # a vector (e.g. pretrained text) gets a trainable linear adapter as wide
        # as the id embedding, whose role it takes for unseen ids.
        name: (keras.layers.Dense(feature_embedding_dim, use_bias=False,
                                  name=f"{name}_embedding")
               if spec.type == "multi_categorical" else
               keras.layers.Dense(id_embedding_dim, name=f"{name}_adapter")
               if spec.type == "vector" else
               keras.layers.Embedding(sizes[name], feature_embedding_dim,
                                      name=f"{name}_embedding"))
        for name, spec in self.features.items() if name not in self.looked_up}
    dense_penalty = keras.regularizers.L1L2(dense_l1, dense_l2) if dense_l1 or dense_l2 else None
    self.dense_layers = (dense_stack(hidden_layers, "hidden", dense_penalty)
                         + [keras.layers.Dense(embedding_dim, kernel_regularizer=dense_penalty,
                                               name="projection")])
    # ((part, width), ...): the first dense layer's input, part by part (the
    # id, each feature, the history), set when built; `tfmtl.transfer` maps
    # its kernel's rows by part. A tuple of pairs: not tracked by Keras.
    self.input_widths: tuple[tuple[str, int], ...] = ()

  @staticmethod
  def table_features(id_feature: str, features: dict[str, FeatureConfig]) -> list[str]:
    """The features whose tables `EmbeddingTables` can hold: the id and the
    categorical and bucketized features."""
    return [id_feature, *(name for name, spec in features.items()
                          if spec.type in ("categorical", "bucketized"))]

  def call(self, features: dict[str, tf.Tensor],
           rows: Optional[dict[str, tf.Tensor]] = None) -> tf.Tensor:
    """The embeddings of encoded `features`; `rows`: the shared tables' rows
    of them (looked up here when not given)."""
    if self.tables is not None and rows is None:
      rows = self.tables({name: features[name] for name in self.looked_up})
    parts = {self.id_feature: rows[self.id_feature] if self.tables
             else self.id_embedding(features[self.id_feature])}
    for name, spec in self.features.items():
      if name in self.looked_up:
        parts[name] = rows[name]
        continue
      values = features[name]
      if spec.type == "multi_categorical":  # mean of the tokens
        values = values / tf.maximum(tf.reduce_sum(values, axis=-1, keepdims=True), 1.0)
      parts[name] = self.feature_embeddings[name](values)
    if self.sequence is not None:
      parts[HISTORY] = self.sequence(features[HISTORY])
    self.input_widths = tuple((name, int(part.shape[-1])) for name, part in parts.items())
    parts = [tf.cast(part, self.compute_dtype) for part in parts.values()]  # float16 when mixed
    embeddings = tf.cast(apply_stack(self.dense_layers, tf.concat(parts, axis=-1)), tf.float32)
    return tf.math.l2_normalize(embeddings, axis=-1) if self.normalize else embeddings
