"""The multi-task two-tower model: a `tfrs.Model` over shared embeddings.

The query tower (user id + user features) and the candidate tower (item id +
item features) produce embeddings that every task shares: the retrieval task
scores query . candidate with an in-batch softmax, and each ranking task
(rating regression, like classification, ...) reads the pair through its own
head. The loss is the weighted sum of the tasks' losses; a `sample_weight`
feature, when the examples have one, weights every task's per-example loss.

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

import itertools
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.config import (ConfigError, ExperimentConfig, ModelConfig, TaskConfig, default_tasks,
                          history_length)
from tfmtl.content import CONTENT
from tfmtl.data.pipeline import encode_table
from tfmtl.data.schema import DOMAIN, ITEM_ID, SAMPLE_WEIGHT, USER_ID, vector_dims
from tfmtl.distillation import Distillation
from tfmtl.distribute import agreed_logs, on_tpu, replica_device_scope, steps_per_execution
from tfmtl.features import FeatureVocabulary
from tfmtl.layers import EmbeddingTables, FeatureTower, RankingHeads, SequencePooling, make_block
from tfmtl.optimizers import (OPTIMIZERS, create_optimizer_variables, tpu_embedding_optimizer,
                              learning_rate as scheduled_learning_rate)
from tfmtl.precision import dtype_policy
from tfmtl.tasks import TaskInputs, make_task, task_type
from tfmtl.transfer import FineTuning, FineTuningCallback
from tfmtl.weighting import make_weighting

# Eager reads of the whole catalogue's embeddings take this many items at a time.
CATALOGUE_CHUNK = 65_536


class MultiTaskModel(tfrs.Model):
  """Retrieval, ranking and auxiliary tasks over shared two-tower embeddings.

  The tasks come from their configs alone (see `TaskConfig`); each is an
  instance of its type's class (`tfmtl.tasks`), in `model.tasks`: retrieval
  reads the two towers, pair-reading tasks (regression, binary, implicit)
  the shared `RankingHeads`, classification and reconstruction tasks a
  head of their own on one tower. Their losses are combined by the
  configured loss weighting (`tfmtl.weighting`); `fit` logs each task's
  `<task>_loss` and effective `<task>_weight` every epoch.

  Args:
    vocabulary: vocabularies learnt from the training split.
    catalogue: the item table (`data.items`): every item the model can
      recommend, with its features.
    config: towers, multi-task block and loss weighting.
    tasks: the tasks by name (default: retrieval, rating, like).
    training_metrics: also compute metrics on training batches (slow).
    users: the user table (`data.users`); needed only when a user feature
      is a vector (exports look it up by user id).
    embedding_optimizer: with `config.tpu_embedding`, under `TPUStrategy`:
      what updates the tables (`tfmtl.optimizers.tpu_embedding_optimizer`).
  """

  def __init__(self, vocabulary: FeatureVocabulary, catalogue: pd.DataFrame,
               config: Optional[ModelConfig] = None,
               tasks: Optional[dict[str, TaskConfig]] = None,
               training_metrics: bool = False, users: Optional[pd.DataFrame] = None,
               embedding_optimizer=None, **kwargs):
    super().__init__(**kwargs)
    self.distribute_reduction_method = "first"  # the steps' logs are agreed
    config = config or ModelConfig()
    self.vocabulary = vocabulary
    vectors = vector_dims(vocabulary.user_features)
    if vectors and users is None:
      raise ValueError(f"user features {sorted(vectors)} are vectors (e.g. propagated "
                       "interests) that exports look up by user id: pass `users`")
    self.user_vectors = (users[[USER_ID, *vectors]].reset_index(drop=True) if vectors
                         else None)
    self.task_configs = dict(tasks or default_tasks())
    self.training_metrics = training_metrics
    self.fine_tuning: Optional[FineTuning] = None  # see `tfmtl.transfer`
    self.distillation: Optional[Distillation] = None  # see `tfmtl.distillation`
    self.encoder = vocabulary.encoder()
    self.catalogue_item_ids = catalogue[ITEM_ID].to_numpy(dtype=object)
    self.catalogue_features = {
        name: tf.constant(values) for name, values in encode_table(
            self.encoder, catalogue, [ITEM_ID, *vocabulary.item_features]).items()}
    self.embedding_dim = config.embedding_dim
    hidden = {task_type(task.type).predicted_feature(name, task, vocabulary.user_features,
                                                     vocabulary.item_features)
              for name, task in self.task_configs.items()
              if task_type(task.type).hides_feature}  # (tower, feature) a task predicts
    features = {**vocabulary.user_features, **vocabulary.item_features}
    sizes = {name: vocabulary.size(name) for name in (USER_ID, ITEM_ID, *features)
             if name not in vector_dims(features)}  # vectors have no indices
    tower_args = dict(embedding_dim=config.embedding_dim,
                      id_embedding_dim=config.id_embedding_dim,
                      feature_embedding_dim=config.feature_embedding_dim,
                      hidden_layers=config.tower_layers, l2=config.l2, l1=config.l1,
                      dense_l2=config.tower_l2, dense_l1=config.tower_l1,
                      normalize=config.normalize_embeddings)
    sequence = config.sequence
    reads_history = bool(history_length(config, self.task_configs))
    if reads_history != bool(vocabulary.history_length):
      raise ValueError(
          f"the model {'reads' if reads_history else 'does not read'} the history feature "
          f"(model.sequence.type {sequence.type!r}, reconstruction tasks) but the vocabulary "
          f"has history_length {vocabulary.history_length}; build it with "
          "FeatureVocabulary.build(..., history_length=config.history_length)")
    query_features = {n: f for n, f in vocabulary.user_features.items()
                      if ("query", n) not in hidden}
    candidate_features = {n: f for n, f in vocabulary.item_features.items()
                          if ("candidate", n) not in hidden}
    self.embedding_tables = EmbeddingTables(
        {name: (sizes[name], config.id_embedding_dim if name in (USER_ID, ITEM_ID)
                else config.feature_embedding_dim)
         for name in (*FeatureTower.table_features(USER_ID, query_features),
                      *FeatureTower.table_features(ITEM_ID, candidate_features))},
        embedding_optimizer) if config.tpu_embedding else None
    tower_args["tables"] = self.embedding_tables
    self.query_tower = FeatureTower(
        USER_ID, sizes, query_features,
        sequence=None if sequence.type == "none" else SequencePooling(
            sequence.type, sizes[ITEM_ID], config.id_embedding_dim,
            vocabulary.history_length, name="history",
            item_vectors=(content_by_item_index(self.catalogue_features, sizes[ITEM_ID])
                          if sequence.content else None)),
        id_embedding_blocks=_blocks(config, USER_ID), name="query_tower", **tower_args)
    self.candidate_tower = FeatureTower(
        ITEM_ID, sizes, candidate_features,
        id_embedding_blocks=_blocks(config, ITEM_ID), name="candidate_tower", **tower_args)
    ranking_tasks = {name: task for name, task in self.task_configs.items()
                     if task_type(task.type).reads_pair}
    num_domains = len(vocabulary.domains)  # with data.domain_column: per-domain parts
    self.ranking = RankingHeads(
        make_block(config.multitask, list(ranking_tasks), num_domains),
        {name: task.layers for name, task in ranking_tasks.items()},
        cross_layers=config.multitask.cross_layers,
        domain_heads=num_domains if config.multitask.per_domain != "gates" else 0,
        shared_head=config.multitask.per_domain == "shared_heads",
        name="ranking") if ranking_tasks else None
    multitask = config.multitask
    if multitask.coupling and len(ranking_tasks) > 1:  # a regularization loss, as L2's
      pairs = multitask.coupling_pairs or list(itertools.combinations(ranking_tasks, 2))
      self.add_loss(lambda: multitask.coupling * self.ranking.coupling(
          pairs, multitask.coupling_distance))
    self.tasks = {name: make_task(name, task, self)
                  for name, task in self.task_configs.items()}
    self.loss_weighting = make_weighting(
        config.loss_weighting.type,
        {name: task.weight for name, task in self.task_configs.items()},
        config.loss_weighting.temperature)
    self.task_losses = {name: keras.metrics.Mean(name=f"{name}_loss")
                        for name in self.task_configs}
    self.task_weights = {name: keras.metrics.Mean(name=f"{name}_weight")
                         for name in self.task_configs}
    self.distillation_loss = keras.metrics.Mean(name="distillation_loss")
    self.loss_means = {name: keras.metrics.Mean(name=name)  # the epoch's, as Keras logs `loss`
                       for name in ("loss", "regularization_loss")}

  def catalogue_embeddings(self, chunk: int = 0) -> tf.Tensor:
    """Candidate embeddings of the whole catalogue, [num_items, dim].

    `chunk` > 0 (eagerly, without gradients): the tower reads `chunk`
    items at a time, so its activations never span the whole catalogue
    (the export and the evaluation read `CATALOGUE_CHUNK`).
    """
    if not chunk:
      return self.candidate_tower(self.catalogue_features)
    embeddings = None
    for start in range(0, len(self.catalogue_item_ids), chunk):
      part = self.candidate_tower({name: values[start:start + chunk]
                                   for name, values in self.catalogue_features.items()}).numpy()
      if embeddings is None:
        embeddings = np.empty((len(self.catalogue_item_ids), part.shape[1]), part.dtype)
      embeddings[start:start + len(part)] = part
    return tf.convert_to_tensor(embeddings)

  def create_variables(self, per_replica_batch: int = 1) -> None:
    """Creates every variable with one call on a row of missing features.

    On a TPU the shared tables (`model.tpu_embedding`) are looked up only
    inside a train step: they are built for the step's `per_replica_batch`
    rows, and this call takes zero rows instead. Once created, nothing
    changes.
    """
    if self.built:
      return
    rows = None
    if self.embedding_tables is not None and on_tpu():
      tables = self.embedding_tables
      tables.build({name: tf.TensorShape([per_replica_batch]) for name in tables.features})
      rows = {name: tf.zeros([1, config.table.dim])
              for name, config in tables.feature_configs.items()}
    self(self.encoder(self.encoder.missing()), rows=rows)

  def call(self, features: dict[str, tf.Tensor],
           rows: Optional[dict[str, tf.Tensor]] = None) -> dict[str, tf.Tensor]:
    """Embeddings and every ranking task's prediction for encoded features.

    Regression tasks predict the label's value, binary and implicit tasks a
    probability. `rows`: the shared tables' rows of the features (with
    `model.tpu_embedding`; looked up when not given).
    """
    query_embeddings, candidate_embeddings = self._tower_embeddings(features, rows)
    outputs = {"query_embedding": query_embeddings,
               "candidate_embedding": candidate_embeddings}
    if self.ranking is not None:
      logits = self.ranking(query_embeddings, candidate_embeddings, features.get(DOMAIN))
      outputs.update({name: self.tasks[name].prediction(logit)
                      for name, logit in logits.items()})
    return outputs

  def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    inputs = self._task_inputs(features, compute_metrics=self.training_metrics or not training)
    losses = {name: tf.nn.compute_average_loss(task.compute_loss(inputs, self))
              for name, task in self.tasks.items()}
    total_loss, weights = self.loss_weighting(losses)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    for name, loss in losses.items():
      # `loss` is this replica's share of the global mean; the metric
      # averages the replicas' own means.
      self.task_losses[name].update_state(loss * replicas)
      if training:
        self.task_weights[name].update_state(weights[name])
    if self.distillation is not None and training:
      soft_loss = self.distillation.loss(self, inputs)
      self.distillation_loss.update_state(soft_loss)  # this replica's mean
      total_loss += soft_loss / replicas
    return total_loss

  def _task_inputs(self, features: dict[str, tf.Tensor],
                   compute_metrics: bool = False) -> TaskInputs:
    """The towers' embeddings and ranking logits of a batch: what tasks read."""
    query, candidate = self._tower_embeddings(features)
    logits = ({} if self.ranking is None else
              self.ranking(query, candidate, features.get(DOMAIN)))
    return TaskInputs(features, query, candidate, logits, features.get(SAMPLE_WEIGHT),
                      compute_metrics)

  def _tower_embeddings(self, features: dict[str, tf.Tensor],
                        rows: Optional[dict[str, tf.Tensor]] = None
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """Query and candidate embeddings of a batch: with `model.tpu_embedding`,
    from one lookup of every shared table (one TPU embedding call a step)."""
    if self.embedding_tables is not None and rows is None:
      rows = self.embedding_tables(features)
    return self.query_tower(features, rows=rows), self.candidate_tower(features, rows=rows)

  def sampled_item_logits(self, task: str, num_negatives: int, query_embeddings: tf.Tensor,
                          domains: Optional[tf.Tensor] = None) -> tf.Tensor:
    """A ranking task's logits for catalogue items drawn uniformly, [batch, n]
    (`domains`: each query's domain index, with `data.domain_column`)."""
    batch = tf.shape(query_embeddings)[0]
    rows = tf.random.uniform([batch * num_negatives], maxval=len(self.catalogue_item_ids),
                             dtype=tf.int32)
    items = self.candidate_tower({name: tf.gather(values, rows)
                                  for name, values in self.catalogue_features.items()})
    queries = tf.repeat(query_embeddings, num_negatives, axis=0)
    if domains is not None:
      domains = tf.repeat(domains, num_negatives, axis=0)
    return tf.reshape(self.ranking(queries, items, domains)[task], [batch, num_negatives])

  def fit(self, *args, callbacks=None, **kwargs):
    """Keras `fit`, with the callbacks of the loss weighting (DWA) and of
    fine-tuning (the freezing schedule) added. The model's and optimizer's
    variables are created first (`create_variables`; on a TPU with shared
    tables, call it with the step's batch before), so that Keras traces its
    train step once instead of twice."""
    with self.distribute_strategy.scope():
      if not (self.built or self.embedding_tables is not None and on_tpu()):
        self.create_variables()
      if self.built:
        create_optimizer_variables(self.optimizer, self.trainable_variables)
    callbacks = [*(callbacks or []), *self.loss_weighting.callbacks(),
                 *([FineTuningCallback(self.fine_tuning)] if self.fine_tuning else [])]
    return super().fit(*args, callbacks=callbacks, **kwargs)

  def train_step(self, inputs):
    """TFRS's train step, plus fine-tuning: the L2-SP penalty joins the
    regularization loss, and updates are scaled (0 while frozen)."""
    return self._traced_once("train", self._train_step, inputs)

  def test_step(self, inputs):
    return self._traced_once("test", self._test_step, inputs)

  def make_train_function(self, force=False):
    if self.train_function is None or force:  # Keras traces anew (after `compile`)
      self._step_functions.pop("train", None)
    return super().make_train_function(force)

  def make_test_function(self, force=False):
    if self.test_function is None or force:
      self._step_functions.pop("test", None)
    return super().make_test_function(force)

  @property
  def _step_functions(self) -> dict:
    """The steps' own `tf.function`s, out of Keras's attribute tracking:
    nothing saves them."""
    return self.__dict__.setdefault("_tfmtl_step_functions", {})

  def _traced_once(self, kind: str, step, inputs):
    """`step(inputs)` as a `tf.function` of its own, kept while Keras keeps
    its `kind` ("train" or "test") function. Keras runs several steps a
    call (`steps_per_execution`) in an autograph loop whose result is
    undefined before it, and autograph traces such a loop's body twice,
    the first time to learn the result's structure: the second trace now
    calls the function the first one traced. Eager steps (`run_eagerly`)
    and steps under a distribution strategy run `step` as it is: the
    optimizer's update synchronises the replicas (`merge_call`), which
    TensorFlow refuses inside a nested function.

    Autograph does not convert the step, nor the layers and tasks it calls:
    their code branches on tensors with TensorFlow ops, so converting it
    (every layer's `call`, in every process that traces a step) only adds
    work."""
    step = tf.autograph.experimental.do_not_convert(step)
    with replica_device_scope():
      if tf.executing_eagerly() or tf.distribute.has_strategy():
        return step(inputs)
      if kind not in self._step_functions:
        self._step_functions[kind] = tf.function(step, reduce_retracing=True, autograph=False)
      return self._step_functions[kind](inputs)

  def _train_step(self, inputs):
    with tf.GradientTape() as tape:
      loss = self.compute_loss(inputs, training=True)
      variables = self.trainable_variables  # after the first call has created them
      regularization_loss = self._regularization_loss(variables)
      total_loss = loss + regularization_loss
      scaled_loss = self.optimizer.get_scaled_loss(total_loss) if self._loss_scaled else total_loss
    gradients = tape.gradient(scaled_loss, variables)
    if self._loss_scaled:  # mixed_float16: gradients computed on a scaled loss
      gradients = self.optimizer.get_unscaled_gradients(gradients)
    scales = self.fine_tuning.update_scales(variables) if self.fine_tuning else {}
    before = {i: tf.identity(variables[i]) for i in scales}
    self.optimizer.apply_gradients(zip(gradients, variables))
    for i, scale in scales.items():
      variables[i].assign(before[i] + scale * (variables[i] - before[i]))
    self._update_loss_means(loss, regularization_loss)
    logs = {metric.name: metric.result() for metric in self.metrics}  # this replica's
    if not self.training_metrics:  # the other metrics were not computed
      logs = {name: value for name, value in logs.items()
              if name.endswith("loss") or name.endswith("_weight")}
    if self.distillation is None:
      logs.pop("distillation_loss", None)
    return _with_total_loss(agreed_logs(logs))

  def _update_loss_means(self, loss: tf.Tensor, regularization_loss: tf.Tensor) -> None:
    """Adds a step's losses (this replica's shares of the global means) to
    the epoch's means that `fit` and `evaluate` log."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    for name, value in (("loss", loss), ("regularization_loss", regularization_loss)):
      self.loss_means[name].update_state(value * replicas)

  @property
  def _loss_scaled(self) -> bool:
    return isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)

  def _regularization_loss(self, variables=None) -> tf.Tensor:
    """This replica's share (gradients are summed over replicas) of the
    layers' regularization and, when training (`variables` given), of the
    fine-tuning L2-SP penalty."""
    total = tf.reduce_sum([tf.reduce_sum(term) for term in self.losses])
    if self.fine_tuning and variables is not None:
      total += self.fine_tuning.penalty(variables)
    return tf.nn.scale_regularization_loss(total)

  def _test_step(self, inputs):
    loss = self.compute_loss(inputs, training=False)
    self._update_loss_means(loss, self._regularization_loss())
    logs = {metric.name: metric.result() for metric in self.metrics
            if not metric.name.endswith("_weight") and metric.name != "distillation_loss"}
    return _with_total_loss(agreed_logs(logs))


def build_model(config: ExperimentConfig, vocabulary: FeatureVocabulary,
                catalogue: pd.DataFrame, users: Optional[pd.DataFrame] = None,
                steps_per_epoch: Optional[int] = None) -> MultiTaskModel:
  """The compiled model a config describes (its layers under the dtype policy
  `train.precision`; with `mixed_float16`, Keras wraps the optimizer in a
  `LossScaleOptimizer`). With `model.tpu_embedding` under `TPUStrategy`,
  the TPU embedding engine gets its own version of the optimizer. The
  learning rate follows `train.learning_rate_schedule` over epochs of
  `steps_per_epoch` steps (`tfmtl.optimizers.learning_rate`)."""
  name = config.train.optimizer
  learning_rate = scheduled_learning_rate(config.train, steps_per_epoch)
  embedding_optimizer = (tpu_embedding_optimizer(name, config.train.learning_rate)
                         if config.model.tpu_embedding and on_tpu() else None)
  with dtype_policy(config.train.precision):  # layers take the policy when created
    model = MultiTaskModel(vocabulary, catalogue, config.model, config.tasks,
                           training_metrics=config.train.training_metrics, users=users,
                           embedding_optimizer=embedding_optimizer)
  try:
    optimizer = (OPTIMIZERS[name](learning_rate) if name in OPTIMIZERS else
                 keras.optimizers.get({"class_name": name,
                                       "config": {"learning_rate": learning_rate}}))
  except ValueError:
    raise ConfigError(f"train.optimizer: unknown optimizer {name!r}"
                      " (e.g. adam, lazy_adam, adagrad, sgd)") from None
  model.compile(optimizer=optimizer, jit_compile=config.train.jit_compile,
                steps_per_execution=steps_per_execution(tf.distribute.get_strategy(),
                                                        config.train))
  return model


def _with_total_loss(logs: dict) -> dict:
  """`logs` with `total_loss`, the epoch's mean of loss + regularization."""
  return {**logs, "total_loss": logs["loss"] + logs["regularization_loss"]}


def _blocks(config: ModelConfig, id_feature: str) -> list[tuple[float, int]]:
  """The (share, width) blocks of an id feature's mixed-dimension embedding."""
  return [(block.share, block.dim) for block in config.id_embedding_blocks.get(id_feature, [])]


def content_by_item_index(catalogue_features: dict[str, tf.Tensor], num_items: int
                         ) -> np.ndarray:
  """[num_items, d]: the content vector of each item index, from the encoded
  catalogue's `content` feature (what the history reads with
  `model.sequence.content`); zeros for OOV (index 0) and for indices the
  catalogue lacks."""
  if CONTENT not in catalogue_features:
    raise ValueError("model.sequence.content: the items have no content feature; set "
                     "content.encoder (e.g. minilm)")
  content = catalogue_features[CONTENT].numpy()
  vectors = np.zeros([num_items, content.shape[1]], np.float32)
  vectors[catalogue_features[ITEM_ID].numpy()] = content
  vectors[0] = 0.0
  return vectors
