"""From a config to a trained model: prepare the data, build, fit.

Saving and reloading the trained model is `tfmtl.runs`; the whole job
(train, evaluate, export, report) is `tfmtl.run`.

Example (what `tfmtl train` does, on the real MovieLens 100K):

>>> from tfmtl.config import ExperimentConfig
>>> from tfmtl import training
>>> config = ExperimentConfig.from_dict({"train": {"epochs": 1}})
>>> prepared = training.prepare(config)
>>> model = training.fit(config, prepared, verbose=0)
>>> sorted(model.tasks)
['like', 'rating', 'retrieval']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.checkpoints import (EpochHistory, backup_and_restore, checkpoint_folder,
                               resume_point)
from tfmtl.config import ConfigError, ExperimentConfig, TrainConfig
from tfmtl.content import ItemContentTable, encode_item_content, with_content
from tfmtl.data.history import add_history, add_history_column
from tfmtl.data.pipeline import batched_dataset, encode_interactions
from tfmtl.data.schema import ITEM_ID, USER_ID, InteractionData
from tfmtl.data.service import served
from tfmtl.data.shards import SPEC as SHARDS_SPEC, example_shards_dataset, write_example_shards
from tfmtl.data.sources import load_data, load_source, mix_source
from tfmtl.data.splits import Split, split_interactions
from tfmtl.distillation import Distillation
from tfmtl.distribute import (epoch_steps, input_readers, is_chief, make_strategy, on_tpu,
                              steps_per_execution, training_input)
from tfmtl.evaluation import ValidationMetrics, metric_direction
from tfmtl.features import FeatureVocabulary
from tfmtl.model import MultiTaskModel, build_model
from tfmtl.optimizers import DENSE_ADAM_WARNING_ROWS
from tfmtl.propagation import add_propagated_feature
from tfmtl.runs import check_run_dir, default_run_dir, load_run
from tfmtl.tasks import task_type
from tfmtl.transfer import fine_tune_from

logger = logging.getLogger("tfmtl")


class Prepared(NamedTuple):
  """Data, its split and the vocabularies learnt from the training split
  (with the source domain's interactions, which sample-based transfer adds
  to training; `tfmtl.data.sources.mix_source`).

  With a sequence model, every part of the split has the `history` column;
  with `content.encoder`, `content` is the item content table the data's
  `content` feature came from.
  """
  data: InteractionData
  split: Split
  vocabulary: FeatureVocabulary
  source: Optional[InteractionData] = None
  content: Optional[ItemContentTable] = None
  source_balance: str = "rows"  # `transfer.balance` (`mix_source`)

  def training_examples(self) -> tuple[InteractionData, pd.DataFrame]:
    """The data and rows `fit` trains on."""
    return mix_source(self.data, self.split.train, self.source, self.source_balance)


def prepare(config: ExperimentConfig) -> Prepared:
  """Loads the data, splits it and builds vocabularies from the train split
  (and, for `content.fine_tune.objective: recommend`, fine-tunes the text
  encoder inside a recommender trained on it: `tfmtl.text_tower`)."""
  data = load_data(config.data)
  source = (load_source(config.transfer.source, data, config.transfer.source_weight)
            if config.transfer.source else None)
  table = None
  if config.content.encoder != "none":
    table = encode_item_content(data.items, config.content, config.data.cache_dir)
    data = with_content(data, table)
    source = source and with_content(source, encode_item_content(
        source.items, config.content, config.data.cache_dir))
  for name, task in config.tasks.items():
    task_type(task.type).check_data(name, task, data.user_features, data.item_features,
                                    data.label_columns,
                                    data.sources.get("interactions", "the interactions"))
  split = split_interactions(data.interactions, config.split, data.given_split)
  check_split(config, split, ("train",))
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
  prepared = Prepared(data, split, None, source, table, config.transfer.balance)
  if source:
    logger.info("%s joins training, weight %g, balanced by %s", source.summary(),
                config.transfer.source_weight, config.transfer.balance)
  prepared = prepared._replace(vocabulary=FeatureVocabulary.build(
      *prepared.training_examples(), config.history_length))
  if table and not config.content.table and config.content.fine_tune.objective == "recommend":
    from tfmtl.text_tower import tune_in_recommender  # pylint: disable=import-outside-toplevel
    prepared = tune_in_recommender(config, prepared)
  return prepared


def check_split(config: ExperimentConfig, split: Split, needed: Sequence[str]) -> None:
  """A `ConfigError` saying which of the `needed` parts of `split` is empty
  and why, so that a run fails before it trains, not after."""
  for part in needed:
    if len(getattr(split, part)):
      continue
    options, total = config.split, sum(len(rows) for rows in split)
    fraction = (dict(zip(Split._fields, options.fractions)).get(part)
                if options.protocol != "temporal" else None)
    if fraction == 0:
      why = f"split.fractions {options.fractions} gives it none"
    elif options.protocol in ("per_user", "temporal"):
      why = (f"split.protocol {options.protocol} cuts each user's interactions, and no user "
             f"has enough for a {part} one (the most any user has: "
             f"{_most_per_user(split)})")
    else:
      why = f"split.fractions {options.fractions} leaves it none of {total} interactions"
    raise ConfigError(f"split: the {part} part is empty: {why}")


def _most_per_user(split: Split) -> int:
  users = pd.concat([rows[USER_ID] for rows in split])
  return int(users.value_counts().max()) if len(users) else 0


class NonFiniteLossError(ValueError):
  """Training produced a loss that is NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Raises `NonFiniteLossError`, naming the epoch and the task, when an
  epoch's mean loss is not finite: `fit` stops, and nothing is saved or
  exported. It comes before the checkpointing callback, so the last
  checkpoint holds the last finite epoch's weights."""

  def __init__(self, learning_rate: float):
    super().__init__()
    self.learning_rate = learning_rate

  def on_epoch_end(self, epoch, logs=None):
    bad = {name: value for name, value in (logs or {}).items()
           if name.endswith("loss") and not math.isfinite(float(value))}
    if bad:
      tasks = [name for name in bad if name not in ("loss", "total_loss", "regularization_loss")]
      raise NonFiniteLossError(
          f"training diverged in epoch {epoch + 1}: "
          f"{', '.join(f'{name} {bad[name]}' for name in tasks or bad)}; nothing was saved. "
          f"Lower train.learning_rate (now {self.learning_rate:g}), or set "
          "train.resume=false to start over rather than resume from the last finite epoch")


class EpochTimer(keras.callbacks.Callback):
  """Each epoch's seconds (`times`), from its first batch to the end of
  every callback listed before this one (a checkpoint, say)."""

  def on_train_begin(self, logs=None):
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self.start)


class EarlyStopping(keras.callbacks.EarlyStopping):
  """Keras' early stopping on the validation metric `val_<metric>`
  (`train.early_stopping`), counting only the epochs validation ran in; it
  ends training with the best epoch's weights, whether it stopped early or
  not, and logs which epoch it kept."""

  def __init__(self, metric: str, patience: int, min_delta: float, direction: str):
    super().__init__(monitor=f"val_{metric}", patience=patience, min_delta=min_delta,
                     mode=direction, restore_best_weights=True)

  def get_monitor_value(self, logs):
    return (logs or {}).get(self.monitor)  # epochs without validation: not counted

  def on_train_end(self, logs=None):
    super().on_train_end(logs)  # restores the best weights
    if self.best_weights is None:
      return
    logger.info("train.early_stopping: kept epoch %d (%s %.4f)%s", self.best_epoch + 1,
                self.monitor, self.best, f"; stopped after epoch {self.stopped_epoch + 1}"
                if self.stopped_epoch else "")


def early_stopping(config: ExperimentConfig) -> list[keras.callbacks.Callback]:
  """`train.early_stopping`'s callback (none when it is off)."""
  options = config.train.early_stopping
  if not options.metric:
    return []
  return [EarlyStopping(options.metric, options.patience, options.min_delta,
                        options.direction or metric_direction(options.metric) or "auto")]


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
  if is_chief():
    check_run_dir(default_run_dir(config))  # before training, not after it
  readers = input_readers(options.strategy)
  if options.input == "tfrecord" and not options.data_service and options.input_shards < readers:
    raise ConfigError(f"train.input_shards: {options.input_shards} file(s) for {readers} "
                      f"workers that each read their own files; give at least {readers}")
  strategy = make_strategy(options.strategy, options.devices, options.tpu,
                           options.shard_min_bytes)
  tables_on_tpu = config.model.tpu_embedding and on_tpu(strategy)
  steps_per_call = steps_per_execution(strategy, options)
  if tables_on_tpu:
    _check_tables_on_tpu(config)
  elif options.optimizer.lower() == "adam":
    _warn_dense_adam(prepared.vocabulary)
  data, rows = prepared.training_examples()
  with strategy.scope():
    model = build_model(config, prepared.vocabulary, prepared.data.items, prepared.data.users,
                        epoch_steps(strategy, len(rows), options.batch_size, steps_per_call))
    model.create_variables(options.batch_size // strategy.num_replicas_in_sync)
    encoded = encode_interactions(model.encoder, data, rows)
    if config.transfer.pretrained:
      fine_tune_from(model, load_run(config.transfer.pretrained)[1], config.transfer)
    if config.distillation.teacher:
      distillation = Distillation.from_config(config.distillation, model, prepared.split.train,
                                              lambda path: load_run(path)[1], encoded)
      if config.distillation.initialize == "pca":
        distillation.initialize_student(model)
      if distillation.weight or distillation.listwise:
        model.distillation = distillation
    checkpoints = checkpoint_folder(default_run_dir(config))
    backup = backup_and_restore(model, checkpoints, options.checkpoint_steps, options.resume,
                                steps_per_call)
  if isinstance(strategy, tf.distribute.ParameterServerStrategy):
    sharded = sorted({v.name.split("/part_")[0] for v in model.variables if "/part_1" in v.name})
    logger.info("split across the parameter servers: %s", ", ".join(sharded) or "none")
  if tables_on_tpu and options.validate_every:
    logger.warning("train.validate_every: skipped; the TPU embedding tables can be read on "
                   "the host only after training")
  epochs, first_step = range(options.epochs), None
  if options.input == "memory":  # each epoch's order from the seed and the epoch alone
    first_epoch, first_step = resume_point(
        checkpoints, epoch_steps(strategy, len(rows), options.batch_size, steps_per_call),
        options.checkpoint_steps > 0)
    epochs = range(min(first_epoch, options.epochs - 1), options.epochs)
  with _input_folder(config) as folder:
    train, steps = training_input(strategy, _batches(options, encoded, folder, config.seed,
                                                     epochs),
                                  len(rows), options.batch_size, config.model.tpu_embedding,
                                  steps_per_call, first_step)
    logs = [ValidationMetrics(prepared.data, prepared.split, config.evaluate.ks,
                              0 if tables_on_tpu else options.validate_every,
                              options.validation_users, config.seed,
                              config.evaluate.batch_size)]
    if options.log_dir and is_chief():
      logs.append(keras.callbacks.TensorBoard(str(Path(options.log_dir) / config.name)))
    try:
      model.fit(train, epochs=options.epochs, verbose=verbose,
                callbacks=[StopOnNonFiniteLoss(options.learning_rate), *logs,
                           *early_stopping(config), EpochHistory(checkpoints), backup,
                           *callbacks], **steps)
    except BaseException:
      if is_chief() and not (checkpoints / "chief" / "checkpoint").exists():
        shutil.rmtree(checkpoints, ignore_errors=True)  # nothing to resume from
      raise
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
  if config.train.learning_rate_schedule != "constant" or config.train.warmup_steps:
    raise ConfigError("train.learning_rate_schedule: the TPU embedding engine updates the "
                      "tables at the constant train.learning_rate; leave the schedule "
                      "constant without warm-up, or set model.tpu_embedding: false")
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
  if folder.exists() and not (folder / SHARDS_SPEC).is_file():
    raise FileExistsError(f"{folder}: exists and is not tfmtl's training input (it has no "
                          f"{SHARDS_SPEC}), so tfmtl will not replace it; move it away")
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def _batches(options: TrainConfig, encoded: dict, folder: Path, seed: int, epochs: range):
  """`training_input`'s batches: from memory (those of `epochs`), or an
  epoch from TFRecord shards (through the tf.data service if the config
  names one)."""
  if options.input == "memory":
    return lambda input_context, drop_remainder: batched_dataset(
        encoded, options.batch_size, True, seed, drop_remainder, input_context, epochs)
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
