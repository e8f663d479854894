"""Distillation: soft losses toward a teacher, zero when the student is the teacher."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl import runs, training
from tfmtl.config import ConfigError, ExperimentConfig, ModelConfig, default_tasks
from tfmtl.data import Split, make_dataset
from tfmtl.distillation import Distillation, ListwiseCandidates
from tfmtl.features import FeatureVocabulary
from tfmtl.teachers import EaseTeacher
from tfmtl.teachers.ease import interaction_matrix


def _model(data, vocabulary, tasks=None, **model_args):
  model = tfmtl.MultiTaskModel(vocabulary, data.items, ModelConfig(**model_args), tasks)
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.create_variables()
  return model


@pytest.fixture(scope="module")
def teacher(tiny_data):
  vocabulary = FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = _model(tiny_data, vocabulary, embedding_dim=16)
  model.fit(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64), epochs=5,
            verbose=0)
  return model


def _batch(model, data):
  return next(iter(make_dataset(data, data.interactions, model.encoder, 128)))


def _soft_loss(student, distillation, batch):
  return float(distillation.loss(student, student._task_inputs(batch)))


def test_the_soft_loss_is_zero_when_the_student_is_the_teacher(tiny_data, teacher):
  student = _model(tiny_data, teacher.vocabulary, embedding_dim=16)
  student.set_weights(teacher.get_weights())
  distillation = Distillation(teacher, weight=1.0, temperature=2.0)
  batch = _batch(student, tiny_data)
  assert _soft_loss(student, distillation, batch) == pytest.approx(0.0, abs=1e-5)
  stranger = _model(tiny_data, teacher.vocabulary, embedding_dim=4)
  assert _soft_loss(stranger, distillation, batch) > 0.01


def test_a_student_trained_on_the_soft_loss_alone_moves_toward_the_teacher(tiny_data, teacher):
  unweighted = {name: dataclasses.replace(task, weight=0.0)  # no hard-label loss
                for name, task in default_tasks().items()}
  student = _model(tiny_data, teacher.vocabulary, unweighted, embedding_dim=4,
                   id_embedding_dim=4, tower_layers=[])
  student.distillation = Distillation(teacher, weight=1.0, temperature=1.0)
  batch = _batch(student, tiny_data)

  def gap():
    return np.abs(student(batch)["rating"].numpy() - teacher(batch)["rating"].numpy()).mean()
  before = gap()
  history = student.fit(make_dataset(tiny_data, tiny_data.interactions, student.encoder, 64),
                        epochs=10, verbose=0)
  assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
  assert gap() < 0.5 * before


def test_a_config_distills_from_a_saved_teacher_run(tiny_data, teacher, tmp_path):
  empty = tiny_data.interactions.iloc[:0]
  prepared = training.Prepared(tiny_data, Split(tiny_data.interactions, empty, empty),
                               teacher.vocabulary)
  run = runs.save_run(tmp_path / "teacher",
                          ExperimentConfig().with_overrides(["model.embedding_dim=16"]),
                          prepared, teacher)
  config = ExperimentConfig().with_overrides([
      "model.embedding_dim=4", "train.epochs=1", "train.batch_size=64",
      f"distillation.teacher={run}", "distillation.weight=2.0"])
  student = training.fit(config, prepared, verbose=0)
  assert student.distillation.weight == 2.0
  assert "distillation_loss" in student.history.history


def test_a_teacher_with_other_vocabularies_reads_the_batch_by_raw_ids_and_tokens(tiny_data,
                                                                              teacher):
  """The teacher knows only the first 300 interactions' ids and tokens, in
  another order than the student: mapped, the student's encoded batch is
  what the teacher's own encoder makes of the raw values, and the examples
  with a user or item the teacher lacks are marked unknown."""
  known_rows = tiny_data.interactions.iloc[:300]
  narrow = _model(tiny_data, FeatureVocabulary.build(tiny_data, known_rows), embedding_dim=4)
  distilled = Distillation(narrow, weight=1.0)
  distilled.check_student(teacher)  # the full-vocabulary model as the student
  raw = tiny_data.examples(tiny_data.interactions.iloc[::-1])
  mapped = distilled.teacher.vocabulary_map(teacher.encoder(raw))
  theirs = narrow.encoder(raw)
  for name in ("user_id", "item_id", "taste", "genres"):
    np.testing.assert_array_equal(mapped[name].numpy(), theirs[name].numpy(), err_msg=name)
  weights = distilled.teacher.task_inputs(teacher.encoder(raw)).sample_weight.numpy()
  np.testing.assert_array_equal(weights == 1, np.isin(raw["user_id"], known_rows["user_id"])
                                & np.isin(raw["item_id"], known_rows["item_id"]))
  assert 0 < weights.mean() < 1


def test_a_cached_run_teacher_says_what_its_towers_say_each_step(tiny_data, teacher):
  """`cache` computes the teacher's embedding of each user and item once
  (here through a vocabulary map: the teacher knows only some of them);
  every output the terms read is the same as running its towers."""
  known_rows = tiny_data.interactions.iloc[:300]
  narrow = _model(tiny_data, FeatureVocabulary.build(tiny_data, known_rows), embedding_dim=4)
  taught = Distillation(narrow, weight=1.0).teacher
  taught.check_student(teacher)
  batch = teacher.encoder(tiny_data.examples(tiny_data.interactions.iloc[::-1]))
  towers = taught.task_inputs(batch), taught.catalogue_scores(batch)
  examples = {name: value.numpy() for name, value in batch.items()}
  assert taught.cache(teacher, examples, batch_size=25)  # in batches of 25 users or items
  cached = taught.task_inputs(batch), taught.catalogue_scores(batch)
  for name in ("query", "candidate", "sample_weight"):
    np.testing.assert_allclose(getattr(cached[0], name), getattr(towers[0], name), atol=1e-6)
  for name, logits in towers[0].logits.items():
    np.testing.assert_allclose(cached[0].logits[name], logits, atol=1e-5)
  np.testing.assert_allclose(cached[1][0], towers[1][0], atol=1e-5)
  np.testing.assert_array_equal(cached[1][1], towers[1][1])
  assert 0 < towers[0].sample_weight.numpy().mean() < 1


def test_a_text_aware_teacher_places_items_by_text_an_id_only_student_lacks(tiny_data,
                                                                           teacher):
  """The teacher reads a `content` vector per item, the student does not:
  the cached item embeddings are the teacher's catalogue embeddings, where
  its towers on the student's batches would see zeros for the text."""
  from tfmtl.content import ItemContentTable, with_content
  vectors = np.random.default_rng(0).normal(size=[len(tiny_data.items), 6]).astype(np.float32)
  with_text = with_content(tiny_data, ItemContentTable(
      tiny_data.items["item_id"].tolist(), vectors, "random", "{genres}", 8))
  text_aware = _model(with_text, FeatureVocabulary.build(with_text, with_text.interactions),
                      embedding_dim=16)
  taught = Distillation(text_aware, weight=1.0).teacher
  taught.check_student(teacher)
  batch = teacher.encoder(tiny_data.examples(tiny_data.interactions))
  blind = taught.task_inputs(batch).candidate  # its towers, the text zero
  assert taught.cache(teacher, {name: value.numpy() for name, value in batch.items()})
  columns = pd.Index(text_aware.catalogue_item_ids).get_indexer(
      np.asarray(teacher.vocabulary.item_ids)[batch["item_id"].numpy() - 1])
  cached = taught.task_inputs(batch).candidate
  np.testing.assert_allclose(cached, tf.gather(text_aware.catalogue_embeddings(), columns),
                             atol=1e-6)
  assert not np.allclose(cached, blind, atol=1e-3)


def _distances(table):
  return np.linalg.norm(table[:, None] - table[None], axis=-1)


@pytest.mark.parametrize("blocks", [{}, {"item_id": [{"share": 0.3, "dim": 32},
                                                     {"share": 0.7, "dim": 32}]}])
def test_pca_initialisation_keeps_the_teachers_id_geometry(tiny_data, teacher, blocks):
  """At the teacher's width the principal coordinates are the teacher's
  (centred) embeddings rotated: every distance between two ids is kept."""
  from tfmtl.config import EmbeddingBlock
  blocks = {k: [EmbeddingBlock(**b) for b in v] for k, v in blocks.items()}
  student = _model(tiny_data, teacher.vocabulary, embedding_dim=4, id_embedding_dim=32,
                   id_embedding_blocks=blocks, tower_layers=[])
  Distillation(teacher).initialize_student(student)
  for tower in ("query_tower", "candidate_tower"):
    size = getattr(teacher, tower).id_embedding.input_dim
    taught = getattr(teacher, tower).id_embedding(np.arange(size)).numpy()
    layer = getattr(student, tower).id_embedding
    tables = getattr(layer, "tables", None) or [layer.embeddings]
    bounds = getattr(layer, "bounds", (0, size))
    for table, start, end in zip(tables, bounds, bounds[1:]):
      np.testing.assert_allclose(_distances(table.numpy()), _distances(taught[start:end]),
                                 atol=1e-4)


def test_a_config_initialises_the_student_from_the_teacher(tiny_data, teacher, tmp_path):
  empty = tiny_data.interactions.iloc[:0]
  prepared = training.Prepared(tiny_data, Split(tiny_data.interactions, empty, empty),
                               teacher.vocabulary)
  run = runs.save_run(tmp_path / "teacher", ExperimentConfig().with_overrides(
      ["model.embedding_dim=16"]), prepared, teacher)
  config = ExperimentConfig().with_overrides([
      "model.embedding_dim=4", "model.id_embedding_dim=2", "model.tower_layers=[]",
      "train.epochs=1", "train.learning_rate=1.0e-9", f"distillation.teacher={run}",
      "distillation.weight=0", "distillation.initialize=pca"])
  student = training.fit(config, prepared, verbose=0)
  assert student.distillation is None  # weight 0: no soft losses, only the start
  taught = teacher.query_tower.id_embedding.embeddings.numpy()
  np.testing.assert_allclose(student.query_tower.id_embedding.embeddings.numpy(),
                             tfmtl.distillation.principal_coordinates(taught, 2), atol=1e-4)


def test_a_run_teachers_catalogue_scores_reuse_its_batch_outputs_unchanged(tiny_data, teacher):
  taught = Distillation(teacher).teacher
  batch = _batch(teacher, tiny_data)
  (alone, known), (reused, reused_known) = (taught.catalogue_scores(batch),
                                            taught.catalogue_scores(batch,
                                                                    taught.task_inputs(batch)))
  np.testing.assert_allclose(reused.numpy(), alone.numpy(), rtol=1e-6)
  np.testing.assert_array_equal(reused_known.numpy(), known.numpy())
  assert known.numpy().all()  # the teacher's own data: every user and item known


def test_the_masked_kl_equals_a_direct_numpy_computation():
  rng = np.random.default_rng(0)
  teacher, student = rng.normal(size=(2, 3, 6)).astype(np.float32)
  seen = rng.random((3, 6)) < 0.3
  expected = []
  for t, s, hidden in zip(teacher, student, seen):
    t, s = t[~hidden], s[~hidden]
    p, q = np.exp(t) / np.exp(t).sum(), np.exp(s) / np.exp(s).sum()
    expected.append(float((p * np.log(p / q)).sum()))
  got = tfmtl.tasks.base.masked_kl(tf.constant(teacher), tf.constant(student),
                                   tf.constant(seen)).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_ease_teacher_equals_the_numpy_closed_form():
  rng = np.random.default_rng(1)
  matrix = (rng.random((30, 12)) < 0.3).astype(np.float32)
  gram = matrix.T.astype(np.float64) @ matrix + 5.0 * np.eye(12)
  inverse = np.linalg.inv(gram)
  weights = -inverse / np.diag(inverse)
  np.fill_diagonal(weights, 0.0)
  np.testing.assert_allclose(EaseTeacher.from_matrix(matrix, l2=5.0).score_matrix.numpy(),
                             matrix @ weights, rtol=1e-4, atol=1e-5)


def test_ease_that_would_not_fit_in_memory_is_refused_naming_the_key():
  with pytest.raises(ConfigError, match=r"^distillation.teacher: ease needs about [\d.]+ GiB "
                                        r"for 10,000,000 items"):
    tfmtl.teachers.ease._check_memory(users=1_000, items=10_000_000)


def test_the_top_k_and_margin_terms_equal_direct_numpy_computations():
  rng = np.random.default_rng(2)
  teacher, student = rng.normal(size=(2, 3, 8)).astype(np.float32)
  hidden = rng.random((3, 8)) < 0.3
  weights = np.exp(-np.arange(3) / 2.0)
  weights /= weights.sum()
  top, margins = [], []
  for t, s, h in zip(teacher, student, hidden):
    t, s = t[~h], s[~h]
    log_p = s - np.log(np.exp(s).sum())
    top.append(-(weights * log_p[np.argsort(-t)[:3]]).sum())
    margins.append(np.mean(((s[:, None] - s[None]) - (t[:, None] - t[None])) ** 2))
  args = tf.constant(teacher), tf.constant(student), tf.constant(hidden)
  np.testing.assert_allclose(tfmtl.distillation.top_k_cross_entropy(*args, k=3, decay=2.0),
                             top, rtol=1e-5)
  np.testing.assert_allclose(tfmtl.distillation.margin_mse(*args), margins, rtol=1e-5)


@pytest.mark.parametrize("kind", ["run", "ease"])
def test_listwise_candidates_score_the_teachers_best_and_the_batchs_unseen_items(
    tiny_data, teacher, kind):
  """Per example: the teacher's n best unseen items for its user and the
  batch's other unseen items, each once. With n the catalogue's size, every
  listwise term equals the whole catalogue's."""
  student = _model(tiny_data, teacher.vocabulary, embedding_dim=8)
  train = tiny_data.interactions
  taught = (EaseTeacher.fit(student, train, 10.0) if kind == "ease"
            else Distillation(teacher).teacher)
  batch = _batch(student, tiny_data)
  if kind == "run":
    taught.cache(student, {name: value.numpy() for name, value in batch.items()})
  inputs = student._task_inputs(batch)
  seen = interaction_matrix(student, train) > 0
  users = batch["user_id"].numpy().reshape(-1)
  items = len(student.catalogue_item_ids)
  few = ListwiseCandidates.find(taught, student, train, n=5)
  teacher_scores, _, hidden = (t.numpy() for t in few.scores(taught, student, inputs))
  all_scores = taught.user_scores(tf.range(seen.shape[0]))[0].numpy()
  columns = pd.Index(student.catalogue_item_ids).get_indexer(
      np.asarray(student.vocabulary.item_ids, object)[batch["item_id"].numpy().reshape(-1) - 1])
  for row, user in enumerate(users):
    unseen = np.flatnonzero(~seen[user])
    best = set(unseen[np.argsort(-all_scores[user, unseen])[:5]])
    expected = best | (set(columns) - set(np.flatnonzero(seen[user])))
    shown = teacher_scores[row][~hidden[row]]
    assert len(shown) == len(expected)  # each item once
    # float32 scores from two computations: a score near 0 (5.9e-4) once
    # differed by 2e-8, over rtol alone. The items' scores shown then were
    # at least 4e-5 apart, far above atol.
    np.testing.assert_allclose(np.sort(shown), np.sort(all_scores[user, sorted(expected)]),
                               rtol=1e-5, atol=1e-6)
  terms = {"listwise_weight": 1.0, "topk_weight": 1.0, "margin_weight": 0.01}
  whole = Distillation(taught, weight=0.0, seen=tf.constant(seen), **terms)
  covering = Distillation(taught, weight=0.0, **terms,
                          candidates=ListwiseCandidates.find(taught, student, train, n=items))
  assert float(covering.listwise_loss(student, inputs)) == pytest.approx(
      float(whole.listwise_loss(student, inputs)), rel=1e-4)


def test_listwise_candidates_need_a_teacher_that_scores_users_on_their_own(tiny_data, teacher):
  student = _model(tiny_data, teacher.vocabulary, embedding_dim=8)
  options = ExperimentConfig().with_overrides([
      "distillation.teacher=runs/teacher", "distillation.listwise_weight=1",
      "distillation.listwise_candidates=5"]).distillation
  with pytest.raises(ConfigError, match=r"^distillation.listwise_candidates: needs the "
                                        r"teacher's embedding of each user"):
    Distillation.from_config(options, student, tiny_data.interactions, lambda path: teacher)


def _top(scores, seen, k=5):
  return np.argsort(-np.where(seen, -np.inf, scores), axis=1)[:, :k]


@pytest.mark.parametrize("term, candidates", [
    (None, 0), ("listwise_weight", 0), ("topk_weight", 0), ("margin_weight", 0),
    ("listwise_weight", 8)])
def test_each_listwise_term_teaches_a_ranking_the_labels_do_not_hold(tiny_data, teacher, term,
                                                                     candidates):
  """A fixed toy teacher ranks items by random low-rank scores, unrelated to
  the data: a student with a listwise term shares most of its top 5 per
  user, over the whole catalogue or over `candidates` (the teacher's best 8
  of 40 and the batch's items); the same student without one does not."""
  student = _model(tiny_data, teacher.vocabulary, embedding_dim=8)
  rng = np.random.default_rng(0)
  users, items = teacher.vocabulary.size("user_id"), len(student.catalogue_item_ids)
  scores = (rng.normal(size=(users, 3)) @ rng.normal(size=(3, items)) / np.sqrt(3))
  seen = interaction_matrix(student, tiny_data.interactions) > 0
  toy = EaseTeacher(tf.constant(scores, tf.float32))
  sampled = candidates and ListwiseCandidates.find(toy, student, tiny_data.interactions,
                                                   candidates)
  student.distillation = Distillation(
      toy, weight=0.0, listwise_temperature=0.5, seen=None if sampled else tf.constant(seen),
      candidates=sampled or None, **({term: 20.0} if term else {}))
  student.fit(make_dataset(tiny_data, tiny_data.interactions, student.encoder, 64), epochs=20,
              verbose=0)
  ids = np.asarray(teacher.vocabulary.user_ids, object)
  learnt = tfmtl.evaluation.ModelScorer(student, tiny_data).scores(ids).numpy()
  rows = np.arange(1, users)  # index 0 is the unknown user
  overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(
      _top(learnt, seen[rows]), _top(scores[rows], seen[rows]))])
  assert (overlap > 0.6) if term else (overlap < 0.3), overlap


@pytest.mark.parametrize("candidates", [0, 8])
def test_a_config_distills_from_ease_with_the_listwise_term(tiny_data, teacher, candidates):
  empty = tiny_data.interactions.iloc[:0]
  prepared = training.Prepared(tiny_data, Split(tiny_data.interactions, empty, empty),
                               teacher.vocabulary)
  config = ExperimentConfig().with_overrides([
      "train.epochs=2", "train.batch_size=64", "distillation.teacher=ease",
      "distillation.listwise_weight=1.0", "distillation.ease_lambda=10",
      f"distillation.listwise_candidates={candidates}"])
  student = training.fit(config, prepared, verbose=0)
  assert isinstance(student.distillation.teacher, EaseTeacher)
  assert (student.distillation.candidates is not None) == bool(candidates)
  losses = student.history.history["distillation_loss"]
  assert losses[-1] < losses[0] and losses[-1] > 0
