"""`InBatchSoftmax` gives TFRS's retrieval loss and gradients."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.tasks import InBatchSoftmax


def _loss_and_gradients(task, queries, candidates, **kwargs):
  queries, candidates = tf.Variable(queries), tf.Variable(candidates)
  with tf.GradientTape() as tape:
    loss = task(queries, candidates, **kwargs)
    total = tf.reduce_sum(loss * tf.range(1.0, tf.cast(tf.size(loss), tf.float32) + 1.0))
  return [loss.numpy(), *(g.numpy() for g in tape.gradient(total, [queries, candidates]))]


@pytest.mark.parametrize("remove_accidental_hits", [True, False])
@pytest.mark.parametrize("logq", [True, False])
@pytest.mark.parametrize("extra_candidates", [0, 5])  # cross-replica negatives
def test_loss_and_gradients_equal_tfrs_retrieval(remove_accidental_hits, logq, extra_candidates):
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(12, 4)).astype(np.float32)
  candidates = rng.normal(size=(12 + extra_candidates, 4)).astype(np.float32)
  ids = rng.integers(0, 4, size=12 + extra_candidates)  # many repeats: accidental hits
  kwargs = {"candidate_ids": tf.constant(ids), "sample_weight": tf.constant(
      rng.uniform(0.5, 2.0, size=12).astype(np.float32))}
  if logq:
    kwargs["candidate_sampling_probability"] = tf.constant(
        np.r_[1e-9, rng.uniform(1e-3, 0.5, size=11 + extra_candidates)].astype(np.float32))
  tfrs_task = tfrs.tasks.Retrieval(
      loss=keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=keras.losses.Reduction.NONE),
      temperature=0.2, remove_accidental_hits=remove_accidental_hits)
  task = InBatchSoftmax(temperature=0.2, remove_accidental_hits=remove_accidental_hits)

  expected = _loss_and_gradients(tfrs_task, queries, candidates, compute_metrics=False, **kwargs)
  actual = _loss_and_gradients(task, queries, candidates, **kwargs)
  for got, want in zip(actual, expected):  # loss, query gradients, candidate gradients
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if extra_candidates:  # the candidates past the queries are negatives too
    assert np.abs(actual[2][12:]).sum() > 0


def test_without_temperature_and_with_column_weights_it_still_equals_tfrs():
  rng = np.random.default_rng(1)
  queries, candidates = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(2))
  weights = tf.constant(rng.uniform(0.5, 2.0, size=(6, 1)).astype(np.float32))
  tfrs_task = tfrs.tasks.Retrieval(loss=keras.losses.CategoricalCrossentropy(
      from_logits=True, reduction=keras.losses.Reduction.NONE))
  expected = _loss_and_gradients(tfrs_task, queries, candidates, sample_weight=weights)
  actual = _loss_and_gradients(InBatchSoftmax(), queries, candidates, sample_weight=weights,
                               compute_metrics=True)
  for got, want in zip(actual, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_query_whose_candidates_all_share_its_item_has_zero_loss():
  embeddings = tf.constant([[1.0, 0.0], [0.0, 1.0]])
  task = InBatchSoftmax(remove_accidental_hits=True)
  loss, query_gradients, _ = _loss_and_gradients(task, embeddings, embeddings,
                                                 candidate_ids=tf.constant([7, 7]))
  np.testing.assert_allclose(loss, [0.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(query_gradients, np.zeros([2, 2]), atol=1e-7)


def test_accidental_hit_removal_needs_candidate_ids():
  embeddings = tf.ones([2, 2])
  with pytest.raises(ValueError, match="candidate_ids"):
    InBatchSoftmax(remove_accidental_hits=True)(embeddings, embeddings)
