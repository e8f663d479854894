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
['catalogue.parquet', 'config.yaml', 'history.json', 'tfmtl_run.json', 'vocabulary.json',
 'weights']
>>> training.load_run(run_dir)[0] == config
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl import __version__ as tfmtl_version, atomic
from tfmtl.checkpoints import (EpochHistory, backup_and_restore, checkpoint_folder,
                               resume_point)
from tfmtl.config import TOWER_TASK_TYPES, ConfigError, ExperimentConfig, TrainConfig
from tfmtl.content import encode_item_content, with_content
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
      raise ConfigError(f"tasks.{name}.label: column {task.label!r} is not in "
                        f"{data.sources.get('interactions', 'the interactions')} (numeric "
                        f"columns: {data.label_columns}; a column "
                        f"with a value that is not a finite number is not one, and a "
                        f"warning names its first such row)")
  split = split_interactions(data.interactions, config.split)
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
  prepared = Prepared(data, split, None, source)
  if source:
    logger.info("%s joins training, weight %g", source.summary(),
                config.transfer.source_weight)
  return prepared._replace(vocabulary=FeatureVocabulary.build(
      *prepared.training_examples(), config.history_length))


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
  if is_chief():
    check_run_dir(default_run_dir(config))  # before training, not after it
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
                              options.validation_users, config.seed)]
    if options.log_dir and is_chief():
      logs.append(keras.callbacks.TensorBoard(str(Path(options.log_dir) / config.name)))
    try:
      model.fit(train, epochs=options.epochs, verbose=verbose,
                callbacks=[StopOnNonFiniteLoss(options.learning_rate), *logs,
                           EpochHistory(checkpoints), backup, *callbacks], **steps)
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


def default_run_dir(config: ExperimentConfig) -> Path:
  return Path(config.train.run_dir or Path("runs") / config.name)


RUN_MARKER = "tfmtl_run.json"
_RUN_FILES = ("config.yaml", "vocabulary.json", "catalogue.parquet", "weights/model.index")


def is_run(folder: str | Path) -> bool:
  """Whether `folder` is a saved tfmtl run: it holds the marker file that
  `save_run` writes (or, saved before the marker existed, every run file)."""
  folder = Path(folder)
  return (folder / RUN_MARKER).is_file() or all((folder / name).is_file()
                                                for name in _RUN_FILES)


def check_run_dir(run_dir: str | Path) -> Path:
  """Raises `FileExistsError` unless `run_dir` is free or a tfmtl run that
  `save_run` may replace: a folder of anything else is never touched."""
  run_dir = Path(run_dir)
  if run_dir.exists() and not is_run(run_dir):
    raise FileExistsError(
        f"{run_dir}: exists and is not a tfmtl run (it has no {RUN_MARKER}), so tfmtl will "
        "not replace it; choose another name or train.run_dir, or move that folder away")
  return run_dir


def save_run(run_dir: str | Path, config: ExperimentConfig, prepared: Prepared,
             model: MultiTaskModel) -> Path:
  """Writes config, vocabularies, catalogue and weights, then puts them in
  place of `run_dir` at once (`tfmtl.atomic.write_folder`). An existing
  `run_dir` is replaced only if it is a tfmtl run (`check_run_dir`); if
  writing fails, `run_dir` is left as it was and nothing else remains.

  A multi-worker run's other workers write theirs to a temporary folder,
  which is removed: the chief's is the run (`tfmtl.distribute.is_chief`).
  """
  run_dir = check_run_dir(run_dir)
  write = lambda folder: _write_run(folder, config, prepared, model)
  if not is_chief():
    with tempfile.TemporaryDirectory() as scratch:
      write(Path(scratch))
    return run_dir
  run_dir.parent.mkdir(parents=True, exist_ok=True)
  return atomic.write_folder(run_dir, write, replaceable=is_run)


def _write_run(folder: Path, config: ExperimentConfig, prepared: Prepared,
               model: MultiTaskModel) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / RUN_MARKER).write_text(json.dumps({"tfmtl_version": tfmtl_version,
                                               "name": config.name}) + "\n")
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


def read_run(run_dir: str | Path) -> tuple[ExperimentConfig, FeatureVocabulary, pd.DataFrame]:
  """A saved run's config, vocabulary and catalogue (no model is built)."""
  run_dir = Path(run_dir)
  for name in _RUN_FILES:
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
