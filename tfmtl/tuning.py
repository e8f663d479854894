"""Hyperparameter search with KerasTuner over a space declared in the config.

`tune.space` maps config keys to their values (see `TuneConfig`). Each
trial is the base config with one point of the space set, trained with
`training.fit` and scored on the validation split with the full-catalogue
metrics of `evaluation.evaluate_model`; the objective is one of those
metrics or a weighted blend (`tune.objective`, `tune.direction`).

`Search` is a KerasTuner `BaseTuner` that runs the trials itself: KerasTuner
1.4 builds Keras 3 models and rejects tfmtl's tf_keras model
(keras-team/keras-tuner#1039), so `run_trial` builds, trains and evaluates
it. The algorithms are KerasTuner's oracles (random, bayesian, hyperband),
and so is the rest: the search's state lives in `<tune.directory>/<name>/`,
and rerunning the same search resumes it there, without repeating
finished trials (an interrupted trial is run again); with KerasTuner's
`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`,
a chief serves the oracle and workers run trials.

Each trial's TensorBoard logs (its learning curves, and its values and
validation metrics for TensorBoard's HParams view) are in its
`trial_<id>/logs/`: `tensorboard --logdir tuning/<name>`.

Each trial's trained model is saved as a run in `trial_<id>/run/` (what
`tfmtl export --run` and `runs.load_run` read), so KerasTuner's
`get_best_models` returns trained models. After the search, `best.yaml`
in that folder is the base config with the best trial's values:
`tfmtl train --config .../best.yaml` trains it again.

Example (two one-epoch trials on small synthetic data):

>>> import tempfile
>>> from tfmtl.data.synthetic import write_synthetic
>>> folder = tempfile.mkdtemp()
>>> data = write_synthetic(folder + "/data", 3000, num_users=100, num_items=60, shards=1)
>>> config = ExperimentConfig().with_overrides([
...     "data.source=files", f"data.interactions={data}/interactions-00000-of-00001.parquet",
...     "train.epochs=1", "train.batch_size=256", f"tune.directory={folder}/tuning",
...     "tune.max_trials=2", "tune.space.model.embedding_dim=[8, 16]"])
>>> search = Search(config)
>>> search.search(training.prepare(config), verbose=0)
>>> len(search.oracle.trials), search.best_config().model.embedding_dim in (8, 16)
(2, True)
>>> search.write_best_config().name
'best.yaml'
>>> type(search.get_best_models(1)[0]).__name__
'MultiTaskModel'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import keras_tuner
import tensorflow as tf
import tf_keras as keras
from tensorboard.plugins.hparams import api as hparams_api

from tfmtl import atomic, evaluation, runs, training
from tfmtl.config import ConfigError, ExperimentConfig

logger = logging.getLogger("tfmtl")

_ORACLES = {"random": keras_tuner.oracles.RandomSearchOracle,
            "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
            "hyperband": keras_tuner.oracles.HyperbandOracle}


def is_tuning_worker() -> bool:
  """Whether this process runs trials for a KerasTuner chief elsewhere."""
  return ("KERASTUNER_ORACLE_IP" in os.environ
          and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", ""))


def _must_start_over(folder: Path) -> bool:
  """Whether the saved search in `folder` has trials but none completed.
  KerasTuner resumes a search only once a trial has ended; before, a rerun
  would begin a new search with other values over the first trial's
  leftovers (its checkpoints, its logs). A file of the saved state that is
  not JSON is a ConfigError naming it."""
  trials = sorted(folder.glob("trial_*/trial.json"))
  states = {}
  for path in sorted(folder.glob("*.json")) + trials:
    try:
      states[path] = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
      raise ConfigError(f"{path}: the search's saved state is damaged ({error}); "
                        "`tfmtl tune --overwrite` starts the search over") from None
  if trials and not any(states[path].get("status") == "COMPLETED" for path in trials):
    logger.info("%s: no trial of this search completed; starting it over", folder)
    return True
  return False


def objective(config: ExperimentConfig) -> keras_tuner.Objective:
  """The KerasTuner objective `tune.objective` and `tune.direction` name:
  the metric itself, or `blend` for a weighted blend."""
  weights = config.tune.objective_weights
  known = evaluation.metric_names(config.tasks, config.evaluate.ks)
  for metric in weights:
    if metric not in known:
      raise ConfigError(f"tune.objective: {metric!r} is not a validation metric of this "
                        f"config's tasks and evaluate.ks; expected one of {', '.join(known)}")
  name = next(iter(weights)) if len(weights) == 1 and 1.0 in weights.values() else "blend"
  direction = config.tune.direction or ("" if name == "blend" else
                                        evaluation.metric_direction(name))
  if not direction:
    raise ConfigError(f"tune.direction: say max or min for the objective {name!r}")
  return keras_tuner.Objective(name, direction)


def declare(space: dict[str, Any], hp: keras_tuner.HyperParameters) -> None:
  """Declares `tune.space` on KerasTuner's `hp` (choices of lists or
  mappings become JSON strings, which `trial_overrides` decodes)."""
  for key, values in space.items():
    if isinstance(values, list):
      plain = all(isinstance(v, (int, float, str, bool)) for v in values)
      hp.Choice(key, values if plain else [json.dumps(v) for v in values])
    elif all(isinstance(values[k], int) for k in ("min", "max")) and isinstance(
        values.get("step", 1), int):
      hp.Int(key, values["min"], values["max"], step=values.get("step", 1),
             sampling=values.get("sampling", "linear"))
    else:
      hp.Float(key, values["min"], values["max"], step=values.get("step"),
               sampling=values.get("sampling", "linear"))


def trial_overrides(space: dict[str, Any], values: dict[str, Any]) -> list[str]:
  """`key=value` overrides for one trial's values (`tuner/epochs`, set by
  Hyperband, becomes `train.epochs`)."""
  overrides = []
  for key, value in values.items():
    if key == "tuner/epochs":
      overrides.append(f"train.epochs={value}")
    elif key in space:
      encoded = isinstance(value, str) and not all(isinstance(v, str) for v in space[key])
      overrides.append(f"{key}={value if encoded else json.dumps(value)}")
  return overrides


class Search(keras_tuner.engine.base_tuner.BaseTuner):
  """A KerasTuner search over `config.tune` (see the module doc).

  Args:
    config: the base config; its `tune` section is the search.
    overwrite: start over rather than resume `<tune.directory>/<name>/`.
  """

  def __init__(self, config: ExperimentConfig, overwrite: bool = False):
    if not config.tune.space:
      raise ConfigError("tune.space: nothing to search; give config keys and their values")
    for key, values in config.tune.space.items():
      sample = values[0] if isinstance(values, list) else values["min"]
      try:
        config.with_overrides(trial_overrides(config.tune.space, {key: sample}))
      except ConfigError as error:
        raise ConfigError(f"tune.space.{key}: {error}") from None
    self.config = config
    options = config.tune
    if options.seed < 1:  # (checked here: runs saved with the old default 0 still load)
      raise ConfigError("tune.seed: must be at least 1 (KerasTuner draws a random seed for 0)")
    arguments = ({"max_epochs": options.max_epochs} if options.algorithm == "hyperband"
                 else {"max_trials": options.max_trials})
    oracle = _ORACLES[options.algorithm](objective=objective(config), seed=options.seed,
                                         **arguments)
    hp = keras_tuner.HyperParameters()
    declare(options.space, hp)
    oracle.update_space(hp)
    if not overwrite and not is_tuning_worker():
      overwrite = _must_start_over(Path(options.directory) / config.name)
    super().__init__(oracle, directory=options.directory, project_name=config.name,
                     overwrite=overwrite)
    self._prepared: Optional[training.Prepared] = None

  def search(self, prepared: training.Prepared, verbose: int = 1) -> None:
    """Runs trials until the oracle stops (`prepared`: the base config's
    data); `verbose=0` hides KerasTuner's trial summaries."""
    if not len(prepared.split.validation):
      raise ConfigError("split.fractions: the search scores trials on the validation "
                        "split, which is empty")
    self._prepared = prepared
    super().search(verbose=verbose)

  def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
    config = self.trial_config(trial.hyperparameters.values, trial.trial_id)
    logger.info("trial %s: %s", trial.trial_id,
                " ".join(trial_overrides(self.config.tune.space, trial.hyperparameters.values)))
    keras.backend.clear_session()
    prepared = self._prepared_for(config)
    model = training.fit(config, prepared, verbose=0)
    metrics = evaluation.evaluate_model(model, prepared.data,
                                        evaluation.on_validation(prepared.split),
                                        config.evaluate.ks, config.evaluate.batch_size)
    runs.save_run(config.train.run_dir, config, prepared, model)  # get_best_models
    metrics["blend"] = sum(weight * metrics[name]
                           for name, weight in self.config.tune.objective_weights.items())
    with tf.summary.create_file_writer(str(Path(config.train.log_dir) / config.name)).as_default():
      hparams_api.hparams({key: value for key, value in trial.hyperparameters.values.items()},
                          trial_id=trial.trial_id)  # TensorBoard's HParams view
      for name, value in metrics.items():
        tf.summary.scalar(name, value, step=config.train.epochs)
    return metrics

  def _prepared_for(self, config: ExperimentConfig) -> training.Prepared:
    """The base config's prepared data, unless the trial changes what it is
    made of (data, split, content, propagation, history)."""
    base = self.config
    same = all(getattr(config, part) == getattr(base, part)
               for part in ("data", "split", "content", "propagation")) and (
        config.history_length == base.history_length and config.transfer == base.transfer)
    return self._prepared if same else training.prepare(config)

  def trial_config(self, values: dict[str, Any], trial_id: str) -> ExperimentConfig:
    """The base config with a trial's values, training (and checkpointing,
    so an interrupted trial resumes) and logging in the trial's folder."""
    run_dir = self.trial_run_dir(trial_id)
    return self.config.with_overrides([*trial_overrides(self.config.tune.space, values),
                                       f"train.run_dir={run_dir}",
                                       f"train.log_dir={run_dir.parent / 'logs'}"])

  def best_overrides(self) -> list[str]:
    """The best trial's values, as `key=value` overrides of the base config."""
    best = self.oracle.get_best_trials(1)
    if not best:
      raise RuntimeError(f"{self.project_dir}: no trial has completed")
    return trial_overrides(self.config.tune.space, best[0].hyperparameters.values)

  def best_config(self) -> ExperimentConfig:
    """The base config with the best trial's values (what `best.yaml` holds)."""
    return self.config.with_overrides(self.best_overrides())

  def write_best_config(self) -> Path:
    """Writes `best.yaml` in the search's folder (atomically); returns its path."""
    return atomic.write_text(Path(self.project_dir) / "best.yaml", self.best_config().to_yaml())

  def save_model(self, trial_id, model, step=0):
    """`run_trial` saves each trial's run itself."""

  def load_model(self, trial) -> keras.Model:
    """The trained model of a finished trial (from its saved run)."""
    return runs.load_run(self.trial_run_dir(trial.trial_id))[1]

  def trial_run_dir(self, trial_id: str) -> Path:
    """Where a trial's run is saved (`tfmtl export --run` takes it)."""
    return Path(self.project_dir) / f"trial_{trial_id}" / "run"
