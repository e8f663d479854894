"""Task types: `InBatchSoftmax` gives TFRS's retrieval loss and gradients; a new type is one class."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

import tfmtl
from tfmtl.config import TaskConfig
from tfmtl.tasks import InBatchSoftmax


def _loss_and_gradients(task, queries, candidates, **kwargs):
  queries, candidates = tf.Variable(queries), tf.Variable(candidates)
  with tf.GradientTape() as tape:
    loss = task(queries, candidates, **kwargs)
    total = tf.reduce_sum(loss * tf.range(1.0, tf.cast(tf.size(loss), tf.float32) + 1.0))
  return [loss.numpy(), *(g.numpy() for g in tape.gradient(total, [queries, candidates]))]


def _assert_float32_close(got, want, rtol=1e-5):
  """Equal up to float32 sums taken in another order, whose error scales with
  the largest term (on an AVX2 CPU, 2e-5 on a gradient among terms of 50)."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 * max(np.abs(want).max(), 1.0))


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
    _assert_float32_close(got, want)
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
    _assert_float32_close(got, want)


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


def _item_candidates(rng, num_candidates, num_items):
  """Candidates looked up by id from an item table (one embedding and one
  sampling probability per id), except id 0's, which differ per candidate
  as unknown items do."""
  ids = rng.integers(0, num_items, size=num_candidates)
  table = tf.Variable(rng.normal(size=(num_items, 4)).astype(np.float32))
  unknown = tf.Variable(rng.normal(size=(num_candidates, 4)).astype(np.float32))
  probability = tf.constant(rng.uniform(1e-3, 0.5, size=num_items).astype(np.float32))
  return tf.constant(ids), table, unknown, tf.gather(probability, ids)


@pytest.mark.parametrize("num_candidates,num_items", [(12, 4), (150, 90), (130, 400)])
@pytest.mark.parametrize("compiled", [False, True])  # XLA scores every candidate
def test_unique_candidates_give_tfrs_loss_and_gradients(num_candidates, num_items, compiled):
  rng = np.random.default_rng(2)
  num_queries = num_candidates - 5  # 5 candidates from other replicas
  ids, table, unknown, probability = _item_candidates(rng, num_candidates, num_items)
  queries = tf.Variable(rng.normal(size=(num_queries, 4)).astype(np.float32))
  weights = tf.constant(rng.uniform(0.5, 2.0, size=num_queries).astype(np.float32))
  tfrs_task = tfrs.tasks.Retrieval(
      loss=keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=keras.losses.Reduction.NONE),
      temperature=0.2, remove_accidental_hits=True)
  task = InBatchSoftmax(temperature=0.2, remove_accidental_hits=True, unique_candidates=True)

  def loss_and_gradients(task):
    with tf.GradientTape() as tape:
      candidates = tf.where((ids == 0)[:, None], unknown, tf.gather(table, ids))
      loss = task(queries, candidates, candidate_ids=ids, sample_weight=weights,
                  candidate_sampling_probability=probability)
      total = tf.reduce_sum(loss * tf.range(1.0, num_queries + 1.0))
    return [loss, *(tf.convert_to_tensor(g) for g in tape.gradient(
        total, [queries, table, unknown]))]

  expected = loss_and_gradients(tfrs_task)
  actual = (tf.function(loss_and_gradients, jit_compile=True) if compiled
            else loss_and_gradients)(task)
  for got, want in zip(actual, expected):  # loss; query, item, unknown-item gradients
    _assert_float32_close(got.numpy(), want.numpy(), rtol=1e-4)


def _first_candidate_losses(queries, candidates, ids, temperature=1.0):
  """The loss when an id's first candidate stands for all of its candidates
  (ids of 0 or less stand for themselves), computed with numpy."""
  stands_for = [j if item <= 0 else list(ids).index(item) for j, item in enumerate(ids)]
  scores = queries @ candidates[stands_for].T / temperature
  positive = (queries * candidates).sum(1) / temperature
  return [np.log(np.exp(positive[i]) + np.exp(scores[i][ids != ids[i]]).sum()) - positive[i]
          for i in range(len(queries))]


def test_unique_candidates_score_an_id_by_its_first_candidate():
  rng = np.random.default_rng(3)
  queries, candidates = (rng.normal(size=(10, 3)).astype(np.float32) for _ in range(2))
  ids = np.array([5, 6, 5, 7, 6, 5, 0, 0, -2, -2])  # ids of 0 or less are never merged
  task = InBatchSoftmax(remove_accidental_hits=True, unique_candidates=True)
  loss = task(queries, candidates, candidate_ids=tf.constant(ids))
  np.testing.assert_allclose(loss.numpy(), _first_candidate_losses(queries, candidates, ids),
                             rtol=1e-5)


def test_the_configured_retrieval_task_scores_each_item_once(tiny_data):
  rng = np.random.default_rng(4)
  queries, candidates = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(2))
  ids = np.array([3, 4, 3, 3, 8, 4])
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, tasks={
      "retrieval": TaskConfig(type="retrieval", temperature=0.5)})
  task = model.tasks["retrieval"].task  # the defaults: accidental hits removed
  loss = task(queries, candidates, candidate_ids=tf.constant(ids))
  np.testing.assert_allclose(
      loss.numpy(), _first_candidate_losses(queries, candidates, ids, 0.5), rtol=1e-5)


def test_unique_candidates_need_accidental_hit_removal():
  with pytest.raises(ValueError, match="remove_accidental_hits"):
    InBatchSoftmax(unique_candidates=True)


def test_a_new_task_type_is_one_class(tiny_data, monkeypatch):
  """A type registered in `TASK_TYPES` is validated, trained, predicted,
  evaluated and exported in its blend with no change elsewhere."""
  import tfmtl.tasks
  from tfmtl.config import ConfigError, ExperimentConfig
  from tfmtl.data import make_dataset
  from tfmtl.evaluation import metric_names, ranking_metrics
  from tfmtl.serving.signatures import default_blend
  from tfmtl.tasks import Regression

  class Hinge(Regression):  # a pair-reading task with a loss and metric of its own
    type = "hinge"
    exact_metrics = ("error_rate",)

    def __init__(self, name, config, model, **kwargs):
      super().__init__(name, config, model, **kwargs)
      self.task = tfrs.tasks.Ranking(
          loss=keras.losses.Hinge(reduction=keras.losses.Reduction.NONE), name=name)

    def labels(self, features):
      return tf.where(super().labels(features) >= 4.0, 1.0, -1.0)

    def evaluate(self, predicted, test):
      return {"error_rate": float(np.mean((predicted > 0) != (test["rating"] >= 4)))}

  monkeypatch.setitem(tfmtl.tasks.TASK_TYPES, "hinge", Hinge)
  with pytest.raises(ConfigError, match="tasks.liked.label: a hinge task needs a label"):
    ExperimentConfig.from_dict({"tasks": {"liked": {"type": "hinge"}}})
  tasks = ExperimentConfig.from_dict(
      {"tasks": {"liked": {"type": "hinge", "label": "rating"}}}).tasks
  assert metric_names(tasks, [10]) == ["liked_error_rate"]
  assert default_blend(tasks) == {"liked": 1.0}
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, tasks=tasks)
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  keras.utils.set_random_seed(0)
  dataset = make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64, shuffle=True)
  history = model.fit(dataset, epochs=15, verbose=0).history
  assert history["liked_loss"][-1] < 0.7 * history["liked_loss"][0]
  metrics = ranking_metrics(model, tiny_data, tiny_data.interactions)
  # One in three ratings is a like: predicting "no like" for all errs 1/3 of the time.
  assert list(metrics) == ["liked_error_rate"] and metrics["liked_error_rate"] < 0.2
