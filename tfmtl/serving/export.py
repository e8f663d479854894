"""SavedModel export in TF Serving's layout: `<base_path>/<name>/<version>/`.

The export answers from raw features (ids as strings); vocabularies, the item
catalogue with its features (text vectors included) and candidate embeddings,
and any vector user features (propagated interests, looked up by `user_id`)
travel inside. Signatures (all batched, outputs sorted best first where they
are lists):

- `retrieve`: the user's raw features (`user_id`, each user feature column
  but vectors and, for a sequence model, `history`: the user's recent item
  ids joined by `|`, most recent first) -> `item_ids` [batch, k] string and `scores`
  [batch, k] float32, brute force over the whole catalogue.
- `rank`: the same user features plus `item_id` [batch, n] string ->
  one [batch, n] float32 output per ranking task (binary tasks give a
  probability). Unknown items and users map to the OOV bucket.
- `serving_default`: the same as `retrieve`.

The version is written to a hidden temporary folder and renamed, so a
crash never leaves a half-written version for TF Serving to pick up, and an
existing version is never overwritten.

Example (`model` a trained `MultiTaskModel`, as in `tfmtl.model`):

    from tfmtl.serving import export_model
    path = export_model(model, "saved_models", "movielens_100k")  # .../1 first
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmtl.data.schema import ITEM_ID, USER_ID, vector_dims
from tfmtl.tasks import task_predictions


class ServingModule(tf.Module):
  """The signatures of an exported `MultiTaskModel` (see module doc)."""

  def __init__(self, model, top_k: int = 100):
    super().__init__(name="tfmtl_serving")
    self.encoder = model.encoder
    self.query_tower = model.query_tower
    self.candidate_tower = model.candidate_tower
    self.ranking = model.ranking
    self.task_configs = dict(model.task_configs)
    self.top_k = min(top_k, len(model.catalogue_item_ids))
    self.catalogue_item_ids = tf.constant(model.catalogue_item_ids.astype(str))
    self.catalogue_embeddings = tf.Variable(model.catalogue_embeddings(),
                                            trainable=False, name="catalogue_embeddings")
    # Row 0 is an unknown item (all features OOV); row i+1 is catalogue item i.
    unknown = model.encoder(model.encoder.missing(1))
    self.item_rows = keras.layers.StringLookup(
        vocabulary=model.catalogue_item_ids.astype(str))
    self.item_features = {
        name: tf.Variable(tf.concat([unknown[name], values], axis=0), trainable=False,
                          name=f"item_{name}")
        for name, values in model.catalogue_features.items()}
    # Vector user features (e.g. propagated interests) are looked up by user id.
    self.user_vectors = {}
    if model.user_vectors is not None:
      self.user_rows = keras.layers.StringLookup(
          vocabulary=model.user_vectors[USER_ID].astype(str).to_numpy())
      self.user_vectors = {
          name: tf.Variable(np.concatenate([np.zeros([1, dim], np.float32),  # unknown users
                                            np.stack(model.user_vectors[name])]),
                            trainable=False, name=f"user_{name}")
          for name, dim in vector_dims(model.vocabulary.user_features).items()}
    raw_signature = model.encoder.raw_signature
    user_signature = {name: raw_signature[name] for name in model.encoder.user_inputs
                      if name not in self.user_vectors}
    rank_signature = {**user_signature,
                      ITEM_ID: tf.TensorSpec([None, None], tf.string, name=ITEM_ID)}
    self.retrieve = tf.function(self._retrieve, input_signature=[user_signature])
    self.rank = tf.function(self._rank, input_signature=[rank_signature])

  def _query_embeddings(self, features):
    if self.user_vectors:
      rows = self.user_rows(features[USER_ID])
      features = {**features, **{name: tf.gather(table, rows)
                                 for name, table in self.user_vectors.items()}}
    return self.query_tower(self.encoder(features))

  def _retrieve(self, features):
    scores = tf.linalg.matmul(self._query_embeddings(features),
                              self.catalogue_embeddings, transpose_b=True)
    top = tf.math.top_k(scores, k=self.top_k)
    return {"item_ids": tf.gather(self.catalogue_item_ids, top.indices),
            "scores": top.values}

  def _rank(self, features):
    item_ids = features[ITEM_ID]
    batch, candidates = tf.shape(item_ids)[0], tf.shape(item_ids)[1]
    user_features = {k: v for k, v in features.items() if k != ITEM_ID}
    query = self._query_embeddings(user_features)
    rows = self.item_rows(tf.reshape(item_ids, [-1]))
    candidate = self.candidate_tower(
        {name: tf.gather(values, rows) for name, values in self.item_features.items()})
    query = tf.repeat(query, candidates, axis=0)
    return {name: tf.reshape(task_predictions(self.task_configs[name], logits),
                             [batch, candidates])
            for name, logits in self.ranking(query, candidate).items()}


def _next_version(model_dir: Path) -> int:
  versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] \
      if model_dir.is_dir() else []
  return max(versions, default=0) + 1


def export_model(model, base_path: str | Path, name: str, top_k: int = 100,
                 version: Optional[int] = None) -> Path:
  """Exports `model` as `<base_path>/<name>/<version>/` and returns that path.

  Args:
    model: a trained `MultiTaskModel`.
    base_path: TF Serving's model base path (e.g. `saved_models`).
    name: the model name: letters, digits, '-', '_' and '.', not starting
      with '.'.
    top_k: number of items `retrieve` returns (clipped to the catalogue).
    version: version number (default: one more than the highest present).
  """
  if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
    raise ValueError(f"export name {name!r}: use letters, digits, '-', '_' and '.', "
                     "not starting with '.'")
  model_dir = Path(base_path) / name
  version = _next_version(model_dir) if version is None else version
  if version < 1:
    raise ValueError(f"export version {version}: must be a positive integer")
  target = model_dir / str(version)
  if target.exists():
    raise FileExistsError(f"{target}: version {version} already exists; "
                          "exports never overwrite a version")
  module = ServingModule(model, top_k)
  retrieve = module.retrieve.get_concrete_function()
  signatures = {"serving_default": retrieve, "retrieve": retrieve,
                "rank": module.rank.get_concrete_function()}
  model_dir.mkdir(parents=True, exist_ok=True)
  staging = model_dir / f".tmp-{version}-{np.random.randint(1 << 30)}"
  try:
    tf.saved_model.save(module, str(staging), signatures=signatures)
    staging.rename(target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target
