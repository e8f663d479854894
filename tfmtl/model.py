"""The multi-task two-tower model: a `tfrs.Model` over shared embeddings.

The query tower (user id + user features) and the candidate tower (item id +
item features) produce embeddings that every task shares: the retrieval task
scores query . candidate with an in-batch softmax, and each ranking task
(rating regression, like classification, ...) reads the pair through its own
head. The loss is the weighted sum of the tasks' losses.

Inputs are encoded features (`make_dataset(..., model.encoder, ...)` makes
them); the model carries its vocabularies (`model.encoder`) and its item
catalogue, so it can score the whole catalogue and be exported as is.

Example (a complete Keras workflow on MovieLens 100K):

>>> import tf_keras as keras
>>> import tfmtl
>>> data = tfmtl.data.load_movielens_100k()
>>> split = tfmtl.data.random_split(data.interactions, (0.8, 0.0, 0.2), seed=42)
>>> vocabulary = tfmtl.FeatureVocabulary.build(data, split.train)
>>> model = tfmtl.MultiTaskModel(vocabulary, data.items)
>>> model.compile(optimizer=keras.optimizers.Adam(0.01))
>>> train = tfmtl.data.make_dataset(data, split.train, model.encoder, 1024, shuffle=True)
>>> test = tfmtl.data.make_dataset(data, split.test, model.encoder, 4096)
>>> history = model.fit(train, epochs=1, verbose=0)
>>> metrics = model.evaluate(test, return_dict=True, verbose=0)
>>> sorted(name for name in metrics if "top_100" in name or "rmse" in name)
['factorized_top_k/top_100_categorical_accuracy', 'rating_rmse']
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.config import ModelConfig, TaskConfig, default_tasks
from tfmtl.data.pipeline import encode_examples
from tfmtl.data.schema import ITEM_ID, USER_ID, table_arrays
from tfmtl.features import FeatureVocabulary
from tfmtl.layers import FeatureTower, RankingHeads, make_block
from tfmtl.tasks import make_task, task_labels, task_predictions


class CatalogueTopK(tfrs.layers.factorized_top_k.TopK):
  """Exact top-k over the model's whole catalogue, embedded on each call."""

  def __init__(self, catalogue_embeddings, k: int = 100, **kwargs):
    super().__init__(k=k, **kwargs)
    self._catalogue_embeddings = catalogue_embeddings  # a function, not a layer

  def index(self, candidates, identifiers=None):
    raise NotImplementedError("CatalogueTopK indexes the model's own catalogue")

  def is_exact(self) -> bool:
    return True

  def call(self, queries: tf.Tensor, k: Optional[int] = None):
    scores = tf.linalg.matmul(queries, self._catalogue_embeddings(), transpose_b=True)
    return tf.math.top_k(scores, k=tf.minimum(k or self._k, tf.shape(scores)[1]))


class MultiTaskModel(tfrs.Model):
  """Retrieval and ranking tasks over shared two-tower embeddings.

  Args:
    vocabulary: vocabularies learnt from the training split.
    catalogue: the item table (`data.items`): every item the model can
      recommend, with its features.
    config: tower sizes.
    tasks: the tasks by name (default: retrieval, rating, like).
    training_metrics: also compute metrics on training batches (slow).
  """

  def __init__(self, vocabulary: FeatureVocabulary, catalogue: pd.DataFrame,
               config: Optional[ModelConfig] = None,
               tasks: Optional[dict[str, TaskConfig]] = None,
               training_metrics: bool = False, **kwargs):
    super().__init__(**kwargs)
    config = config or ModelConfig()
    self.vocabulary = vocabulary
    self.task_configs = dict(tasks or default_tasks())
    self.training_metrics = training_metrics
    self.encoder = vocabulary.encoder()
    sizes = {name: vocabulary.size(name) for name in
             (USER_ID, ITEM_ID, *vocabulary.user_features, *vocabulary.item_features)}
    tower_args = dict(embedding_dim=config.embedding_dim,
                      id_embedding_dim=config.id_embedding_dim,
                      feature_embedding_dim=config.feature_embedding_dim,
                      hidden_layers=config.tower_layers, l2=config.l2,
                      normalize=config.normalize_embeddings)
    self.query_tower = FeatureTower(USER_ID, sizes, vocabulary.user_features,
                                    name="query_tower", **tower_args)
    self.candidate_tower = FeatureTower(ITEM_ID, sizes, vocabulary.item_features,
                                        name="candidate_tower", **tower_args)
    ranking_tasks = {name: task for name, task in self.task_configs.items()
                     if task.type != "retrieval"}
    self.ranking = RankingHeads(
        make_block(config.multitask, list(ranking_tasks)),
        {name: task.layers for name, task in ranking_tasks.items()},
        name="ranking") if ranking_tasks else None
    self.tasks = {name: make_task(name, task)
                  for name, task in self.task_configs.items()}
    self.task_losses = {name: keras.metrics.Mean(name=f"{name}_loss")
                        for name in self.task_configs}
    if any(task.type == "retrieval" for task in self.task_configs.values()):
      self.retrieval_metric = tfrs.metrics.FactorizedTopK(
          CatalogueTopK(self.catalogue_embeddings))
    self.item_probability = tf.constant(vocabulary.item_probabilities())

    self.catalogue_item_ids = catalogue[ITEM_ID].to_numpy(dtype=object)
    raw = table_arrays(catalogue, [ITEM_ID, *vocabulary.item_features])
    self.catalogue_features = {k: tf.constant(v) for k, v in
                               encode_examples(self.encoder, raw).items()}

  def catalogue_embeddings(self) -> tf.Tensor:
    """Candidate embeddings of the whole catalogue, [num_items, dim]."""
    return self.candidate_tower(self.catalogue_features)

  def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Embeddings and every ranking task's prediction for encoded features.

    Binary tasks predict a probability; regression tasks the label's value.
    """
    query_embeddings = self.query_tower(features)
    candidate_embeddings = self.candidate_tower(features)
    outputs = {"query_embedding": query_embeddings,
               "candidate_embedding": candidate_embeddings}
    if self.ranking is not None:
      logits = self.ranking(query_embeddings, candidate_embeddings)
      outputs.update({name: task_predictions(self.task_configs[name], logit)
                      for name, logit in logits.items()})
    return outputs

  def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    query_embeddings = self.query_tower(features)
    candidate_embeddings = self.candidate_tower(features)
    compute_metrics = self.training_metrics or not training
    logits = ({} if self.ranking is None else
              self.ranking(query_embeddings, candidate_embeddings))
    total_loss = tf.constant(0.0)
    for name, config in self.task_configs.items():
      task = self.tasks[name]
      if config.type == "retrieval":
        per_example_loss = task(
            query_embeddings, candidate_embeddings,
            candidate_sampling_probability=(
                tf.gather(self.item_probability, features[ITEM_ID])
                if config.logq_correction else None),
            candidate_ids=features[ITEM_ID], compute_metrics=False)
        if compute_metrics:
          self.retrieval_metric.update_state(query_embeddings, candidate_embeddings)
      else:
        per_example_loss = task(task_labels(config, features), logits[name],
                                compute_metrics=compute_metrics)
      loss = tf.nn.compute_average_loss(per_example_loss)
      self.task_losses[name].update_state(loss)
      total_loss += config.weight * loss
    return total_loss

  def train_step(self, inputs):
    logs = super().train_step(inputs)
    if not self.training_metrics:  # the other metrics were not computed
      logs = {name: value for name, value in logs.items() if name.endswith("loss")}
    return logs
