"""`InBatchSoftmax`: the retrieval task's loss, TFRS's in fewer passes."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs


class InBatchSoftmax(tfrs.tasks.Retrieval):
  """`tfrs.tasks.Retrieval`'s loss, per example, in fewer passes over the scores.

  The loss and its gradients are those of TFRS's task with
  `CategoricalCrossentropy(from_logits=True, reduction=NONE)`: each query's
  softmax over the batch's candidates (more candidates than queries is
  fine, query i's positive being candidate i), scores divided by
  `temperature`, less the log of `candidate_sampling_probability` (logQ,
  clipped to [1e-6, 1]), and candidates of the positive's id left out with
  `remove_accidental_hits`.

  TFRS builds one-hot labels and runs TensorFlow's softmax cross-entropy,
  op by op, about twelve passes over the [queries, candidates] scores
  forward and back. Here the positive's score is a row-wise dot product;
  masking, logQ and the softmax's sums are one function compiled with XLA,
  which fuses them into a few loops; and the gradient (softmax less
  one-hot) goes into the two matmuls with no pass of its own. It computes
  no metrics: the retrieval task keeps its own `FactorizedTopK`.
  Unlike TFRS's task it takes no `score_mask`, hard negatives or
  multi-vector queries, and ids must be numbers (XLA compiles no strings).

  `unique_candidates` (with `remove_accidental_hits`) scores each id once
  per query and counts it once per candidate of that id: the same loss and
  gradients from fewer scores, where candidates of one id have one
  embedding and one sampling probability (as when the candidate tower reads
  only the item's features); a batch that repeats no id pays for the
  search for repeats and gains nothing. Ids of 0 or less are never
  merged: 0 is the out-of-vocabulary index, which may stand for several
  items. Inside XLA (`jit_compile`, TPUs), which needs static
  shapes, every candidate is scored as TFRS does.

  >>> import tensorflow as tf
  >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
  >>> task = InBatchSoftmax(temperature=0.5)
  >>> [round(float(x), 4) for x in task(queries, queries)]  # log(1 + e^-2)
  [0.1269, 0.1269]
  >>> candidates = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  >>> task = InBatchSoftmax(temperature=0.5, remove_accidental_hits=True,
  ...                       unique_candidates=True)
  >>> loss = task(queries, candidates, candidate_ids=tf.constant([1, 2, 2]))
  >>> [round(float(x), 4) for x in loss]  # log(1 + 2 e^-2), log(1 + e^-2)
  [0.2395, 0.1269]
  """

  def __init__(self, temperature: Optional[float] = None, remove_accidental_hits: bool = False,
               unique_candidates: bool = False, name: Optional[str] = None):
    if unique_candidates and not remove_accidental_hits:
      raise ValueError("unique_candidates needs remove_accidental_hits: without it, a "
                       "query's duplicates of its own positive are negatives")
    super().__init__(temperature=temperature, remove_accidental_hits=remove_accidental_hits,
                     name=name)
    self._unique_candidates = unique_candidates

  def call(self, query_embeddings: tf.Tensor, candidate_embeddings: tf.Tensor,
           sample_weight: Optional[tf.Tensor] = None,
           candidate_sampling_probability: Optional[tf.Tensor] = None,
           candidate_ids: Optional[tf.Tensor] = None,
           compute_metrics: bool = False) -> tf.Tensor:
    del compute_metrics  # TFRS's argument; this task has no metrics
    queries = tf.cast(query_embeddings, tf.float32)
    if self._temperature is not None:
      queries = queries / self._temperature  # (q / t) . c is the score over t
    candidates = tf.cast(candidate_embeddings, tf.float32)
    num_queries, num_candidates = tf.shape(queries)[0], tf.shape(candidates)[0]
    if candidate_sampling_probability is None:
      score_bias = tf.zeros([num_candidates])
    else:
      score_bias = -tf.math.log(tf.clip_by_value(
          tf.cast(candidate_sampling_probability, tf.float32), 1e-6, 1.0))
    if self._remove_accidental_hits:  # no candidate of the positive's id is a negative
      if candidate_ids is None:
        raise ValueError("remove_accidental_hits needs candidate_ids")
      query_keys, candidate_keys = candidate_ids[:num_queries], candidate_ids
    else:  # only the positive itself is not a negative
      query_keys, candidate_keys = tf.range(num_queries), tf.range(num_candidates)
    positives, positive_bias = candidates[:num_queries], score_bias[:num_queries]
    if self._unique_candidates and tf.__internal__.get_enclosing_xla_context() is None:
      candidates, score_bias, candidate_keys = _unique_candidates(
          candidates, score_bias, candidate_ids)
    loss = _in_batch_softmax_loss(queries, positives, candidates, positive_bias, score_bias,
                                  query_keys, candidate_keys)
    if sample_weight is not None:
      loss *= tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return loss


# Unique candidates are padded to a multiple of this many, so that the
# softmax's XLA function compiles for a few widths, not for every count.
UNIQUE_CANDIDATES_MULTIPLE = 64


def _unique_candidates(candidates: tf.Tensor, score_bias: tf.Tensor, ids: tf.Tensor
                       ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Each id's first candidate, its score bias plus the log of the id's
  count, and its id; ids of 0 or less per candidate. Padded with zero
  candidates whose bias is -inf (they add nothing to the softmax)."""
  keys = tf.where(ids > 0, ids, -1 - tf.cast(tf.range(tf.size(ids)), ids.dtype))
  unique_keys, column, counts = tf.unique_with_counts(keys)
  num_unique = tf.size(unique_keys)
  first = tf.math.unsorted_segment_min(tf.range(tf.size(ids)), column, num_unique)
  padding = -num_unique % UNIQUE_CANDIDATES_MULTIPLE
  return (tf.pad(tf.gather(candidates, first), [[0, padding], [0, 0]]),
          tf.pad(tf.gather(score_bias, first) + tf.math.log(tf.cast(counts, tf.float32)),
                 [[0, padding]], constant_values=float("-inf")),
          tf.pad(tf.gather(ids, first), [[0, padding]]))


@tf.custom_gradient
def _in_batch_softmax_loss(queries: tf.Tensor, positives: tf.Tensor, negatives: tf.Tensor,
                           positive_bias: tf.Tensor, negative_bias: tf.Tensor,
                           query_keys: tf.Tensor, negative_keys: tf.Tensor):
  """Per query i, -log softmax of positive i over itself and the negatives
  whose key differs from the query's; scores are dot products plus the
  bias (per positive, per negative)."""
  positive_scores = tf.reduce_sum(queries * positives, 1) + positive_bias
  negative_exp, positive_exp, total_exp, loss = _softmax_terms(
      tf.matmul(queries, negatives, transpose_b=True), negative_bias, positive_scores,
      query_keys, negative_keys)

  def gradient(upstream):
    # d loss / d score: negative_exp / total_exp (softmax) for the negatives,
    # positive_exp / total_exp - 1 for the positive; each row's scale is
    # applied to the matmuls' [batch, dim] sides, not to the scores.
    row_scale = (upstream / total_exp)[:, None]
    positive_grad = (upstream * (positive_exp / total_exp - 1.0))[:, None]
    query_grad = row_scale * tf.matmul(negative_exp, negatives) + positive_grad * positives
    negative_grad = tf.matmul(negative_exp, row_scale * queries, transpose_a=True)
    return query_grad, positive_grad * queries, negative_grad, None, None, None, None

  return loss, gradient


@tf.function(jit_compile=True)
def _softmax_terms(scores, score_bias, positive_scores, query_keys, candidate_keys):
  """The negatives' exp (masked to 0), the positive's, their row sums and
  the loss, each relative to the row's top score for stability."""
  negative_scores = tf.where(tf.equal(query_keys[:, None], candidate_keys[None, :]),
                             float("-inf"), scores + score_bias)
  top_scores = tf.maximum(tf.reduce_max(negative_scores, 1), positive_scores)
  negative_exp = tf.exp(negative_scores - top_scores[:, None])
  positive_exp = tf.exp(positive_scores - top_scores)
  total_exp = tf.reduce_sum(negative_exp, 1) + positive_exp
  loss = tf.math.log(total_exp) + top_scores - positive_scores
  return negative_exp, positive_exp, total_exp, loss
