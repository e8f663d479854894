"""The TFRS multitask tutorial's model, as published, for side-by-side runs.

https://www.tensorflow.org/recommenders/examples/multitask: user-id and
movie-title embeddings (32-d, StringLookup inside the model), a 256-128-1
rating MLP, Retrieval + Ranking tasks weighted 1:1, Adagrad 0.1, batch 8192.
The one change is TFRS's own advice for speed: the retrieval metric
(FactorizedTopK over every movie) is computed only when not training.
"""

from __future__ import annotations

import tfmtl  # noqa: F401  (binds Keras 2 first)
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.data import InteractionData


def movie_titles(data: InteractionData) -> dict[str, str]:
  """item_id -> "Title (year)", the form TFDS gives."""
  items = data.items
  years = items["year"].map(lambda y: "" if np.isnan(y) else f" ({int(y)})")
  return dict(zip(items["item_id"], items["title"].astype(str) + years))


def recipe_dataset(data: InteractionData, interactions) -> tf.data.Dataset:
  """Raw string examples with the tutorial's feature names."""
  titles = movie_titles(data)
  return tf.data.Dataset.from_tensor_slices({
      "user_id": interactions["user_id"].to_numpy(dtype=object),
      "movie_title": np.array([titles[i] for i in interactions["item_id"]], dtype=object),
      "user_rating": interactions["rating"].to_numpy(dtype=np.float32)})


class RecipeModel(tfrs.models.Model):
  """The tutorial's `MovielensModel` with training metrics off."""

  def __init__(self, user_ids, titles, rating_weight=1.0, retrieval_weight=1.0):
    super().__init__()
    self.movie_model = keras.Sequential([
        keras.layers.StringLookup(vocabulary=titles, mask_token=None),
        keras.layers.Embedding(len(titles) + 1, 32)])
    self.user_model = keras.Sequential([
        keras.layers.StringLookup(vocabulary=user_ids, mask_token=None),
        keras.layers.Embedding(len(user_ids) + 1, 32)])
    self.rating_model = keras.Sequential([
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1)])
    self.rating_task = tfrs.tasks.Ranking(
        loss=keras.losses.MeanSquaredError(),
        metrics=[keras.metrics.RootMeanSquaredError()])
    movies = tf.data.Dataset.from_tensor_slices(np.array(titles, dtype=object))
    self.retrieval_task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(
        candidates=movies.batch(128).map(self.movie_model)))
    self.rating_weight, self.retrieval_weight = rating_weight, retrieval_weight

  def call(self, features):
    user_embeddings = self.user_model(features["user_id"])
    movie_embeddings = self.movie_model(features["movie_title"])
    return (user_embeddings, movie_embeddings,
            self.rating_model(tf.concat([user_embeddings, movie_embeddings], axis=1)))

  def compute_loss(self, features, training=False):
    ratings = features.pop("user_rating")
    user_embeddings, movie_embeddings, rating_predictions = self(features)
    rating_loss = self.rating_task(labels=ratings, predictions=rating_predictions,
                                   compute_metrics=not training)
    retrieval_loss = self.retrieval_task(user_embeddings, movie_embeddings,
                                         compute_metrics=not training)
    return self.rating_weight * rating_loss + self.retrieval_weight * retrieval_loss


def build_recipe(data: InteractionData, train) -> tuple[RecipeModel, tf.data.Dataset]:
  """The compiled recipe model and its cached, batched training data."""
  titles = sorted(set(movie_titles(data).values()))
  model = RecipeModel(sorted(train["user_id"].unique()), titles)
  model.compile(optimizer=keras.optimizers.Adagrad(0.1))
  dataset = recipe_dataset(data, train).shuffle(100_000, seed=42).batch(8192).cache()
  return model, dataset
