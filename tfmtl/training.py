"""From a config to a trained model: prepare data, build, fit, save, reload.

Example (what `tfmtl train` does, on the real MovieLens 100K):

>>> import tempfile
>>> from tfmtl.config import ExperimentConfig
>>> from tfmtl import training
>>> config = ExperimentConfig.from_dict({"train": {"epochs": 1}})
>>> prepared = training.prepare(config)
>>> model = training.fit(config, prepared, verbose=0)
>>> run_dir = training.save_run(tempfile.mkdtemp() + "/run", config, prepared, model)
>>> sorted(p.name for p in run_dir.iterdir())
['catalogue.parquet', 'config.yaml', 'history.json', 'vocabulary.json', 'weights']
>>> training.load_run(run_dir)[0] == config
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl import atomic
from tfmtl.checkpoints import EpochHistory, backup_and_restore, checkpoint_folder
from tfmtl.config import TOWER_TASK_TYPES, ConfigError, ExperimentConfig, TrainConfig
from tfmtl.content import encode_item_content, with_content
from tfmtl.data.history import add_history, add_history_column
from tfmtl.data.pipeline import batched_dataset, encode_interactions
from tfmtl.data.schema import ITEM_ID, USER_ID, InteractionData
from tfmtl.data.service import served
from tfmtl.data.shards import example_shards_dataset, write_example_shards
from tfmtl.data.sources import load_data, load_source, mix_source
from tfmtl.data.splits import Split, split_interactions
from tfmtl.distillation import Distillation
from tfmtl.distribute import (input_readers, is_chief, make_strategy, on_tpu,
                              steps_per_execution, training_input)
from tfmtl.evaluation import ValidationMetrics
from tfmtl.features import FeatureVocabulary
from tfmtl.model import MultiTaskModel
from tfmtl.optimizers import DENSE_ADAM_WARNING_ROWS, OPTIMIZERS, tpu_embedding_optimizer
from tfmtl.precision import dtype_policy
from tfmtl.propagation import add_propagated_feature
from tfmtl.tasks import tower_task_side
from tfmtl.transfer import fine_tune_from

logger = logging.getLogger("tfmtl")


class Prepared(NamedTuple):
  """Data, its split and the vocabularies learnt from the training split
  (with the source domain's interactions, which sample-based transfer adds
  to training; `tfmtl.data.sources.mix_source`).

  With a sequence model, every part of the split has the `history` column.
  """
  data: InteractionData
  split: Split
  vocabulary: FeatureVocabulary
  source: Optional[InteractionData] = None

  def training_examples(self) -> tuple[InteractionData, pd.DataFrame]:
    """The data and rows `fit` trains on."""
    return mix_source(self.data, self.split.train, self.source)


def prepare(config: ExperimentConfig) -> Prepared:
  """Loads the data, splits it and builds vocabularies from the train split."""
  data = load_data(config.data)
  source = (load_source(config.transfer.source, data, config.transfer.source_weight)
            if config.transfer.source else None)
  if config.content.encoder != "none":
    def encoded(part: InteractionData) -> InteractionData:
      return with_content(part, encode_item_content(part.items, config.content,
                                                    config.data.cache_dir))
    data, source = encoded(data), source and encoded(source)
  for name, task in config.tasks.items():
    if task.type in TOWER_TASK_TYPES:
      tower_task_side(name, task, data.user_features, data.item_features)
    if task.type in ("regression", "binary") and task.label not in data.label_columns:
      raise ConfigError(f"tasks.{name}.label: column {task.label!r} is not in the "
                        f"interactions (numeric columns: {data.label_columns}; a column "
                        f"with a value that is not a finite number is not one, and a "
                        f"warning names its first such row)")
  split = split_interactions(data.interactions, config.split)
  logger.info("%s; split %s: %d train, %d validation, %d test", data.summary(),
              config.split.protocol, len(split.train), len(split.validation),
              len(split.test))
  if config.history_length:
    split = add_history(split, config.history_length)
  if config.history_length and source:
    source = dataclasses.replace(source, interactions=add_history_column(
        source.interactions, source.interactions, config.history_length))
  if config.propagation.feature != "none":
    data = add_propagated_feature(data, split.train, config.propagation)
  prepared = Prepared(data, split, None, source)
  if source:
    logger.info("%s joins training, weight %g", source.summary(),
                config.transfer.source_weight)
  return prepared._replace(vocabulary=FeatureVocabulary.build(
      *prepared.training_examples(), config.history_length))


def build_model(config: ExperimentConfig, vocabulary: FeatureVocabulary,
                catalogue: pd.DataFrame, users: Optional[pd.DataFrame] = None
                ) -> MultiTaskModel:
  """The compiled model a config describes (its layers under the dtype policy
  `train.precision`; with `mixed_float16`, Keras wraps the optimizer in a
  `LossScaleOptimizer`). With `model.tpu_embedding` under `TPUStrategy`,
  the TPU embedding engine gets its own version of the optimizer."""
  name, learning_rate = config.train.optimizer, config.train.learning_rate
  embedding_optimizer = (tpu_embedding_optimizer(name, learning_rate)
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


def _warn_dense_adam(vocabulary: FeatureVocabulary) -> None:
  """Keras' Adam moves every row of a sparse-gradient table at every step."""
  rows, feature = max((vocabulary.size(feature), feature) for feature in (USER_ID, ITEM_ID))
  if rows > DENSE_ADAM_WARNING_ROWS:
    logger.warning("train.optimizer: adam moves all %d rows of the %s table at every step "
                   "(Keras' Adam is dense); lazy_adam moves only the batch's rows, which is "
                   "several times faster on large catalogues (tfmtl.optimizers)", rows, feature)


def fit(config: ExperimentConfig, prepared: Prepared, verbose: int = 2,
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> MultiTaskModel:
  """Builds the model (from a pretrained run, with a teacher, as the config
  says) under the configured strategy and fits it on the training split,
  checkpointing as it goes (`tfmtl.checkpoints`); `callbacks` join `fit`'s."""
  keras.utils.set_random_seed(config.seed)
  options = config.train
  strategy = make_strategy(options.strategy, options.devices, options.tpu,
                           options.shard_min_bytes)
  tables_on_tpu = config.model.tpu_embedding and on_tpu(strategy)
  steps_per_call = steps_per_execution(strategy, options)
  readers = input_readers(strategy)
  if options.input == "tfrecord" and not options.data_service and options.input_shards < readers:
    raise ConfigError(f"train.input_shards: {options.input_shards} file(s) for {readers} "
                      f"workers that each read their own files; give at least {readers}")
  if tables_on_tpu:
    _check_tables_on_tpu(config)
  elif options.optimizer.lower() == "adam":
    _warn_dense_adam(prepared.vocabulary)
  with strategy.scope():
    model = build_model(config, prepared.vocabulary, prepared.data.items, prepared.data.users)
    model.create_variables(options.batch_size // strategy.num_replicas_in_sync)
    if config.transfer.pretrained:
      fine_tune_from(model, load_run(config.transfer.pretrained)[1], config.transfer)
    if config.distillation.teacher:
      distillation = Distillation(load_run(config.distillation.teacher)[1],
                                  config.distillation.weight, config.distillation.temperature)
      distillation.check_student(model)
      if config.distillation.initialize == "pca":
        distillation.initialize_student(model)
      model.distillation = distillation if distillation.weight else None
    checkpoints = checkpoint_folder(default_run_dir(config))
    backup = backup_and_restore(model, checkpoints, options.checkpoint_steps, options.resume,
                                steps_per_call)
  if isinstance(strategy, tf.distribute.ParameterServerStrategy):
    sharded = sorted({v.name.split("/part_")[0] for v in model.variables if "/part_1" in v.name})
    logger.info("split across the parameter servers: %s", ", ".join(sharded) or "none")
  if tables_on_tpu and options.validate_every:
    logger.warning("train.validate_every: skipped; the TPU embedding tables can be read on "
                   "the host only after training")
  data, rows = prepared.training_examples()
  encoded = encode_interactions(model.encoder, data, rows)
  with _input_folder(config) as folder:
    train, steps = training_input(strategy, _batches(options, encoded, folder, config.seed),
                                  len(rows), options.batch_size, config.model.tpu_embedding,
                                  steps_per_call)
    logs = [ValidationMetrics(prepared.data, prepared.split, config.evaluate.ks,
                              0 if tables_on_tpu else options.validate_every,
                              options.validation_users, config.seed)]
    if options.log_dir and is_chief():
      logs.append(keras.callbacks.TensorBoard(str(Path(options.log_dir) / config.name)))
    model.fit(train, epochs=options.epochs, verbose=verbose,
              callbacks=[*logs, EpochHistory(checkpoints), backup, *callbacks], **steps)
  with contextlib.suppress(OSError):
    checkpoints.rmdir()  # Keras has removed the checkpoints, not their folder
  return host_copy(config, prepared, model) if tables_on_tpu else model


def host_copy(config: ExperimentConfig, prepared: Prepared,
              model: MultiTaskModel) -> MultiTaskModel:
  """`model` rebuilt under the default strategy from its saved weights.

  A model trained on a TPU with `model.tpu_embedding` keeps its tables in
  the TPU's memory, where only its train step reads them; writing a
  checkpoint reads them back, so this copy scores the catalogue, evaluates
  and exports on the host (TensorFlow's TPU embedding guide's way).
  """
  with tempfile.TemporaryDirectory() as folder:
    model.save_weights(f"{folder}/model")
    copy = build_model(config, prepared.vocabulary, prepared.data.items, prepared.data.users)
    copy.create_variables()
    copy.load_weights(f"{folder}/model").assert_existing_objects_matched().expect_partial()
  copy.history = model.history
  return copy


def _check_tables_on_tpu(config: ExperimentConfig) -> None:
  """A ConfigError for what the TPU embedding engine, which updates the
  tables itself from their raw gradients, would silently get wrong."""
  if config.train.precision == "mixed_float16":
    raise ConfigError("train.precision: mixed_float16 scales the loss, and the TPU embedding "
                      "engine would apply the scaled gradients: use mixed_bfloat16 on a TPU")
  transfer = config.transfer
  if transfer.pretrained and "embeddings" in transfer.components and (
      "embeddings" in transfer.freeze_epochs or transfer.l2sp
      or transfer.learning_rate_scale != 1.0):
    raise ConfigError("transfer: the TPU embedding engine updates the tables itself, so "
                      "freeze_epochs, l2sp and learning_rate_scale cannot reach them: leave "
                      "them off the embeddings, or set model.tpu_embedding: false")


@contextlib.contextmanager
def _input_folder(config: ExperimentConfig):
  """Where `train.input: tfrecord` writes its shards while training:
  `<run_dir>.input` on the chief, a temporary folder on other workers."""
  if not is_chief():
    with tempfile.TemporaryDirectory() as scratch:
      yield Path(scratch) / "input"
    return
  run_dir = default_run_dir(config)
  folder = run_dir.with_name(run_dir.name + ".input")
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def _batches(options: TrainConfig, encoded: dict, folder: Path, seed: int):
  """`training_input`'s epoch of batches: from memory, or from TFRecord
  shards (through the tf.data service if the config names one)."""
  if options.input == "memory":
    return lambda input_context, drop_remainder: batched_dataset(
        encoded, options.batch_size, True, seed, drop_remainder, input_context)
  write_example_shards(encoded, folder, options.input_shards, seed=seed)
  if options.data_service:
    logger.info("train.data_service: input through the tf.data service at %s (this waits "
                "for its dispatcher and a worker)", options.data_service)

  def batches(input_context, drop_remainder):
    if options.data_service:  # the service splits the files between its workers
      return served(example_shards_dataset(folder, options.batch_size, True, seed,
                                           drop_remainder, shard_by_file=False),
                    options.data_service)
    return example_shards_dataset(folder, options.batch_size, True, seed, drop_remainder,
                                  input_context)
  return batches


def default_run_dir(config: ExperimentConfig) -> Path:
  return Path(config.train.run_dir or Path("runs") / config.name)


def save_run(run_dir: str | Path, config: ExperimentConfig, prepared: Prepared,
             model: MultiTaskModel) -> Path:
  """Writes config, vocabularies, catalogue and weights; replaces atomically.

  A multi-worker run's other workers write theirs to a temporary folder,
  which is removed: the chief's is the run (`tfmtl.distribute.is_chief`).
  """
  run_dir = Path(run_dir)
  if not is_chief():
    with tempfile.TemporaryDirectory() as scratch:
      _write_run(Path(scratch), config, prepared, model)
    return run_dir
  staging = run_dir.with_name(run_dir.name + ".tmp")
  shutil.rmtree(staging, ignore_errors=True)
  _write_run(staging, config, prepared, model)
  _replace_dir(staging, run_dir)
  return run_dir


def _write_run(folder: Path, config: ExperimentConfig, prepared: Prepared,
               model: MultiTaskModel) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.yaml").write_text(config.to_yaml())
  prepared.vocabulary.save(folder / "vocabulary.json")
  prepared.data.items.to_parquet(folder / "catalogue.parquet", index=False)
  if model.user_vectors is not None:
    model.user_vectors.to_parquet(folder / "user_vectors.parquet", index=False)
  model.save_weights(str(folder / "weights" / "model"))
  if model.history is not None and model.history.history:
    (folder / "history.json").write_text(json.dumps(
        {"epoch": model.history.epoch, **model.history.history}, indent=2))


def save_metrics(run_dir: str | Path, metrics: dict) -> Path:
  """Writes a run's `metrics.json` whole or not at all (`tfmtl.atomic`), so
  `tfmtl report` never reads half of it."""
  return atomic.write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2))


def _replace_dir(staging: Path, target: Path) -> None:
  old = target.with_name(target.name + ".old")
  shutil.rmtree(old, ignore_errors=True)
  if target.exists():
    target.rename(old)
  staging.rename(target)
  shutil.rmtree(old, ignore_errors=True)


def read_run(run_dir: str | Path) -> tuple[ExperimentConfig, FeatureVocabulary, pd.DataFrame]:
  """A saved run's config, vocabulary and catalogue (no model is built)."""
  run_dir = Path(run_dir)
  for name in ("config.yaml", "vocabulary.json", "catalogue.parquet", "weights/model.index"):
    if not (run_dir / name).exists():
      raise FileNotFoundError(f"{run_dir}: not a tfmtl run ({name} is missing); "
                              "train one with `tfmtl train`")
  return (ExperimentConfig.from_file(run_dir / "config.yaml"),
          FeatureVocabulary.load(run_dir / "vocabulary.json"),
          pd.read_parquet(run_dir / "catalogue.parquet"))


def load_run(run_dir: str | Path, catalogue: Optional[pd.DataFrame] = None
             ) -> tuple[ExperimentConfig, MultiTaskModel]:
  """Rebuilds a saved run's model with its trained weights (over `catalogue`,
  by default the run's own)."""
  run_dir = Path(run_dir)
  config, vocabulary, own_catalogue = read_run(run_dir)
  catalogue = own_catalogue if catalogue is None else catalogue
  user_vectors = run_dir / "user_vectors.parquet"
  model = build_model(config, vocabulary, catalogue,
                      pd.read_parquet(user_vectors) if user_vectors.exists() else None)
  model.create_variables()
  try:
    status = model.load_weights(str(run_dir / "weights" / "model"))
    status.assert_existing_objects_matched().expect_partial()  # no optimizer state
  except (AssertionError, ValueError, IndexError, tf.errors.OpError) as error:
    raise ValueError(f"{run_dir / 'weights'}: the checkpoint is unreadable or does not match "
                     f"the model that {run_dir / 'config.yaml'} and vocabulary.json describe: "
                     f"{str(error).strip().splitlines()[0]}") from None
  return config, model
