"""`retrieval`: an in-batch softmax over the two towers' embeddings.

The loss is `InBatchSoftmax` (TFRS's `Retrieval` loss) with the logQ
sampling-bias correction from the items' training frequencies and, under a
strategy with several replicas, every replica's candidates as negatives.
Its Keras metric is TFRS's `FactorizedTopK` over the whole catalogue
(`factorized_top_k/top_{k}_categorical_accuracy`); the exact evaluation's
retrieval metrics are `tfmtl.evaluation.retrieval_metrics`.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmtl.data.schema import ITEM_ID
from tfmtl.distribute import all_replicas_own_first
from tfmtl.precision import dtype_policy
from tfmtl.tasks.base import Task, TaskInputs, known_mean, masked_kl
from tfmtl.tasks.in_batch_softmax import InBatchSoftmax
from tfmtl.top_k import top_k_dot


class CatalogueTopK(tfrs.layers.factorized_top_k.TopK):
  """Exact top-k over a model's whole catalogue, embedded on each call."""

  def __init__(self, catalogue_embeddings, k: int = 100, **kwargs):
    super().__init__(k=k, **kwargs)
    self._catalogue_embeddings = catalogue_embeddings  # a function, not a layer

  def index(self, candidates, identifiers=None):
    raise NotImplementedError("CatalogueTopK indexes the model's own catalogue")

  def is_exact(self) -> bool:
    return True

  def call(self, queries: tf.Tensor, k: Optional[int] = None):
    candidates = self._catalogue_embeddings()
    return top_k_dot(queries, candidates, tf.minimum(k or self._k, tf.shape(candidates)[0]))


class Retrieval(Task):
  """The retrieval task (see module doc); its config's `temperature`,
  `logq_correction`, `remove_accidental_hits` and `cross_replica_negatives`
  shape the loss."""

  type = "retrieval"
  needs_label = False

  def __init__(self, name, config, model, **kwargs):
    super().__init__(name, config, **kwargs)
    with dtype_policy("float32"):
      # The candidate tower reads only the item's features: one embedding per id.
      self.task = InBatchSoftmax(temperature=config.temperature,
                                 remove_accidental_hits=config.remove_accidental_hits,
                                 unique_candidates=config.remove_accidental_hits, name=name)
    self.item_probability = tf.constant(model.vocabulary.item_probabilities())
    self.top_k = tfrs.metrics.FactorizedTopK(CatalogueTopK(model.catalogue_embeddings))

  def compute_loss(self, inputs: TaskInputs, model) -> tf.Tensor:
    candidates, ids = inputs.candidate, inputs.features[ITEM_ID]
    probability = (tf.gather(self.item_probability, ids) if self.config.logq_correction
                   else None)
    if self.config.cross_replica_negatives:
      candidates, ids, probability = all_replicas_own_first(candidates, ids, probability)
    loss = self.task(inputs.query, candidates, candidate_sampling_probability=probability,
                     candidate_ids=ids, sample_weight=inputs.sample_weight)
    if inputs.compute_metrics:
      self.top_k.update_state(inputs.query, inputs.candidate)
    return loss

  def distillation_loss(self, student: TaskInputs, teacher: TaskInputs, teacher_task: Task,
                        temperature: float) -> tf.Tensor:
    """The KL divergence from the teacher's softmax over the batch's
    candidates to the student's, both at their task's temperature times
    `temperature`, scaled by `temperature` squared; candidates of examples
    the teacher does not know are left out."""
    t = temperature
    taught = tf.matmul(teacher.query, teacher.candidate, transpose_b=True) / (
        teacher_task.config.temperature * t)
    learnt = tf.matmul(student.query, student.candidate, transpose_b=True) / (
        self.config.temperature * t)
    unknown = tf.zeros_like(taught, tf.bool)
    if teacher.sample_weight is not None:
      unknown |= (tf.reshape(teacher.sample_weight, [-1]) == 0)[tf.newaxis, :]
    return t * t * known_mean(masked_kl(taught, tf.cast(learnt, taught.dtype), unknown),
                              teacher)
