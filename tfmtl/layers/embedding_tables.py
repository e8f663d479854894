"""Both towers' id and categorical tables in one TFRS `TPUEmbedding` layer.

`model.tpu_embedding: true` moves the user-id and item-id tables and every
categorical or bucketized feature's table out of the towers into one
`EmbeddingTables`, a `tfrs.layers.embedding.TPUEmbedding`. The TPU
embedding engine is configured once per program, so one layer holds every
table, and the model looks a batch up in one call per step; the towers
take the rows (`FeatureTower(..., tables=...)`).

- Under `TPUStrategy` the engine shards the tables over the TPU cores and
  updates them in the step with its own optimizer (`train.optimizer`,
  `tfmtl.optimizers.tpu_embedding_optimizer`). It is configured for the
  step's per-replica batch (`MultiTaskModel.create_variables`), and only a
  step can look rows up. The tables' variables are then placeholders,
  refreshed when a checkpoint is written: code that reads tables outside
  the train step (full-catalogue scoring, exports) runs on a copy rebuilt
  on the host from the saved weights (`tfmtl.training.fit` returns one),
  as TensorFlow's TPU embedding guide prescribes.
- Anywhere else (CPU, GPU, MirroredStrategy) the tables are ordinary
  variables, trained by the model's Keras optimizer like any other, and
  a call may look up any subset of the features (TFRS's serving lookup).
  TFRS makes the checkpoints of both kinds compatible.

Example:

>>> import tensorflow as tf
>>> tables = EmbeddingTables({"user_id": (5, 4), "item_id": (7, 4), "genre": (3, 2)})
>>> rows = tables({"user_id": tf.constant([1, 2]), "item_id": tf.constant([0, 6]),
...                "genre": tf.constant([2, 2])})
>>> {name: row.shape.as_list() for name, row in rows.items()}
{'genre': [2, 2], 'item_id': [2, 4], 'user_id': [2, 4]}
>>> tables({"item_id": tf.constant([3])})["item_id"].shape  # a subset, off-TPU
TensorShape([1, 4])
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.distribute import on_tpu


class EmbeddingTables(tfrs.layers.embedding.TPUEmbedding):
  """One table per feature, `<feature>_embedding`, looked up by index.

  Args:
    shapes: (rows, width) of each feature's table, by feature name.
    optimizer: what updates the tables on a TPU (a
      `tf.tpu.experimental.embedding` optimizer); None elsewhere, where the
      model's optimizer trains them.
    name: the layer's name (TFRS's layer takes none).
  """

  def __init__(self, shapes: dict[str, tuple[int, int]], optimizer=None,
               name: str = "embedding_tables"):
    # Keras Embedding's initializer (one per table), so a model trains
    # alike with either kind of table.
    self.feature_configs = {
        feature: tf.tpu.experimental.embedding.FeatureConfig(
            tf.tpu.experimental.embedding.TableConfig(
                rows, width, name=f"{feature}_embedding",
                initializer=keras.initializers.RandomUniform(-0.05, 0.05)),
            name=feature)
        for feature, (rows, width) in sorted(shapes.items())}
    super().__init__(self.feature_configs, optimizer)
    self._name = name  # before the first call names the variables

  @property
  def features(self) -> list[str]:
    return list(self.feature_configs)

  def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Rows of the features this layer holds that `features` has, by name."""
    ids = {name: features[name] for name in self.feature_configs if name in features}
    if len(ids) == len(self.feature_configs):
      return super().call(ids)
    if on_tpu():
      raise ValueError(
          f"model.tpu_embedding: on a TPU a step looks up every table at once "
          f"({self.features}), got only {sorted(ids)}; score the catalogue on the host "
          "copy that tfmtl.training.fit returns")
    return super().call(ids, serving_config={name: self.feature_configs[name] for name in ids})
