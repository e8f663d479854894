"""Distillation: soft losses toward a teacher, zero when the student is the teacher."""

import dataclasses

import numpy as np
import pytest
import tf_keras as keras

import tfmtl
from tfmtl import runs, training
from tfmtl.config import ExperimentConfig, ModelConfig, default_tasks
from tfmtl.data import Split, make_dataset
from tfmtl.distillation import Distillation
from tfmtl.features import FeatureVocabulary


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
  other = FeatureVocabulary.build(tiny_data, tiny_data.interactions.iloc[:100])
  with pytest.raises(ValueError, match=r"distillation.teacher: its vocabulary \(user_ids\)"):
    training.fit(config, training.Prepared(tiny_data, prepared.split, other), verbose=0)


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
