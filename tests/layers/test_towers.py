"""Towers look small tables up by a one-hot matmul, large ones by a gather."""

import numpy as np
import tensorflow as tf

from tfmtl.config import FeatureConfig
from tfmtl.layers import FeatureTower
from tfmtl.layers.towers import ONE_HOT_MAX_ROWS, embedding


def test_a_small_table_gives_the_same_rows_with_a_dense_gradient():
  ids = tf.constant([3, 0, 3, 7])
  one_hot, gather = embedding(10, 4), embedding(ONE_HOT_MAX_ROWS + 1, 4)
  one_hot.build(None)
  gather.build(None)
  gather.embeddings[:10].assign(one_hot.embeddings)
  with tf.GradientTape(persistent=True) as tape:
    rows, gathered = one_hot(ids), gather(ids)
  np.testing.assert_array_equal(rows.numpy(), gathered.numpy())
  dense = tape.gradient(rows, one_hot.embeddings)
  assert isinstance(dense, tf.Tensor)
  assert isinstance(tape.gradient(gathered, gather.embeddings), tf.IndexedSlices)
  np.testing.assert_array_equal(dense.numpy()[:, 0], [1, 0, 0, 2, 0, 0, 0, 1, 0, 0])


def test_a_tower_gathers_its_large_id_table_and_one_hots_its_small_feature():
  tower = FeatureTower("user_id", {"user_id": 1000, "gender": 3},
                       {"gender": FeatureConfig("categorical")})
  features = {"user_id": tf.constant([5, 999]), "gender": tf.constant([1, 2])}
  with tf.GradientTape() as tape:
    embeddings = tower(features)
  ids, gender = tower.id_embedding.embeddings, tower.feature_embeddings["gender"].embeddings
  gradients = tape.gradient(embeddings, [ids, gender])
  assert isinstance(gradients[0], tf.IndexedSlices)
  assert isinstance(gradients[1], tf.Tensor)
  assert np.abs(gradients[1].numpy()[0]).sum() == 0  # gender 0 is not in the batch
