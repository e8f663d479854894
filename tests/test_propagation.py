"""Label propagation: kNN graphs (exact and LSH), label spreading, the user feature."""

import numpy as np
import pytest
import pandas as pd
import scipy.sparse as sp
import tf_keras as keras

import tfmtl
from tfmtl import runs, training
from tfmtl.config import ExperimentConfig, ModelConfig, PropagationConfig
from tfmtl.data import Split, make_dataset
from tfmtl.evaluation import ModelScorer
from tfmtl.features import FeatureVocabulary
from tfmtl.propagation import (add_propagated_feature, interest_labels, knn_graph,
                               spread_labels)


def test_label_spreading_matches_the_hand_computed_fixed_point():
  # Path 0 - 1 - 2; user 0 likes token a, user 2 token b, user 1 is unknown.
  # F = (1 - alpha)(I - alpha S)^-1 Y with alpha 1/2 gives, for token a,
  # (7/12, 2*sqrt(2)/12, 1/12): solved by hand from the three linear equations.
  graph = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float))
  labels = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
  a = np.array([7 / 12, 2 * np.sqrt(2) / 12, 1 / 12])
  expected = np.stack([a, a[::-1]], axis=1)
  expected /= expected.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(spread_labels(graph, labels, alpha=0.5, iterations=60), expected,
                             atol=1e-9)


def _clusters(n, dim=16, centres=30, seed=0):
  rng = np.random.default_rng(seed)
  centre = rng.standard_normal((centres, dim))
  return (centre[rng.integers(centres, size=n)] + 0.3 * rng.standard_normal((n, dim))
          ).astype(np.float32)


def _true_neighbours(vectors, k):
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  sims = unit @ unit.T
  np.fill_diagonal(sims, -np.inf)
  return np.argsort(-sims, axis=1)[:, :k]


def test_the_exact_graph_holds_every_true_neighbour_symmetrically():
  vectors = _clusters(300)
  graph = knn_graph(vectors, k=5)
  truth = _true_neighbours(vectors, 5)
  dense = graph.toarray()
  assert all(dense[row, truth[row]].min() > 0 for row in range(300))
  np.testing.assert_array_equal(dense, dense.T)
  assert (dense.diagonal() == 0).all()


def test_the_lsh_graph_finds_most_true_neighbours():
  vectors = _clusters(4000)
  graph = knn_graph(vectors, k=10, exact_limit=100, bucket_size=64, tables=8)
  truth = _true_neighbours(vectors, 10)
  found = np.mean([graph[row, truth[row]].toarray().ravel() > 0 for row in range(4000)])
  assert found > 0.8, found


def test_interest_labels_are_each_users_share_of_each_token(tiny_data):
  users = pd.Index(tiny_data.users["user_id"])
  labels, tokens = interest_labels(tiny_data.interactions, tiny_data.items, users, "genres")
  joined = tiny_data.interactions.merge(tiny_data.items, on="item_id")
  u0 = joined[joined["user_id"] == "u0"]["genres"].str.split("|").explode()
  expected = u0.value_counts(normalize=True).reindex(tokens, fill_value=0.0).to_numpy()
  np.testing.assert_allclose(labels[users.get_loc("u0")], expected)


def test_the_propagated_feature_reaches_light_users(tiny_data):
  interactions = tiny_data.interactions
  light = interactions["user_id"].isin(["u0", "u1", "u2"])
  train = pd.concat([interactions[~light], interactions[light].groupby("user_id").head(2)])
  config = PropagationConfig(feature="genres", k=5, min_interactions=10, dim=8)
  data = add_propagated_feature(tiny_data, train, config)
  spread = np.stack(data.users.set_index("user_id")["propagated_genres"])
  assert data.user_features["propagated_genres"].dim == spread.shape[1]
  np.testing.assert_allclose(spread.sum(axis=1), 1.0, rtol=1e-5)  # every user is reached
  users = pd.Index(data.users["user_id"])
  own, _ = interest_labels(train, tiny_data.items, users, "genres")
  for user in ("u0", "u1", "u2"):  # 2 training items each: below min_interactions
    row = users.get_loc(user)
    assert (spread[row] > 0).sum() > (own[row] > 0).sum()  # neighbours add genres



def test_an_export_looks_the_propagated_vector_up_by_user_id(tiny_data, tmp_path):
  import tensorflow as tf
  from tfmtl.serving import export_model
  config = PropagationConfig(feature="genres", k=5, min_interactions=10, dim=8)
  data = add_propagated_feature(tiny_data, tiny_data.interactions, config)
  vocabulary = FeatureVocabulary.build(data, data.interactions)
  with pytest.raises(ValueError, match="pass `users`"):
    tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(embedding_dim=8))
  model = tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(embedding_dim=8),
                               users=data.users)
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.fit(make_dataset(data, data.interactions, model.encoder, 64), epochs=2, verbose=0)
  retrieve = tf.saved_model.load(str(export_model(model, tmp_path, "tiny", top_k=5))
                                 ).signatures["serving_default"]
  assert set(retrieve.structured_input_signature[1]) == {"user_id", "taste", "age"}
  users = data.users.set_index("user_id").loc[["u0", "u7"]]
  served = retrieve(user_id=tf.constant(users.index.to_numpy(str)),
                    taste=tf.constant(users["taste"].to_numpy(str)),
                    age=tf.constant(users["age"].to_numpy(np.float32)))["scores"].numpy()
  expected = ModelScorer(model, data).scores(users.index.to_numpy(object))
  np.testing.assert_allclose(served, -np.sort(-expected, axis=1)[:, :5], atol=1e-5)

  empty = data.interactions.iloc[:0]
  config = ExperimentConfig().with_overrides(["model.embedding_dim=8"])
  run = runs.save_run(tmp_path / "run", config,
                          training.Prepared(data, Split(data.interactions, empty, empty),
                                            vocabulary), model)
  _, loaded = runs.load_run(run)
  np.testing.assert_array_equal(np.stack(loaded.user_vectors["propagated_genres"]),
                                np.stack(model.user_vectors["propagated_genres"]))
