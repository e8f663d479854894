"""Crash-safe training: Keras' `BackupAndRestore`, checked before it resumes.

While `fit` trains, checkpoints of the model and its optimizer go to
`<run_dir>.checkpoints/chief/` at the end of every epoch, or instead every
`train.checkpoint_steps` steps (Keras' `save_freq`). TensorFlow writes a
checkpoint's files before the `checkpoint` index that names it, so a crash
while writing leaves the previous checkpoint current. Rerunning the same
config resumes from the last checkpoint: completed epochs are not run
again. Each completed epoch's logs are kept beside the checkpoints too
(`EpochHistory`), so the resumed run's `model.history`, and its
`history.json`, hold every epoch. With `train.checkpoint_steps`, an epoch
resumed mid-way logs its remaining steps only, and a crash after an epoch's
last checkpoint but before its end (its validation metrics) loses that
epoch's logs, not its training. The folder is removed when training
completes.

Before resuming, the checkpoint is read into the model. A corrupt one, or
one of another config's model, raises `CheckpointError` naming the file:
never a silent fresh start. `train.resume: false` removes the folder and
starts over.

Example:

>>> checkpoint_folder("runs/movielens_100k")
PosixPath('runs/movielens_100k.checkpoints')
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tfmtl import atomic
from tfmtl.distribute import is_chief

logger = logging.getLogger("tfmtl")


class CheckpointError(ValueError):
  """A training checkpoint that cannot be resumed from."""


def checkpoint_folder(run_dir: str | Path) -> Path:
  """Where a run's training checkpoints live while it trains."""
  run_dir = Path(run_dir)
  return run_dir.with_name(run_dir.name + ".checkpoints")


def backup_and_restore(model, folder: Path, steps: int = 0, resume: bool = True,
                       steps_per_execution: int = 1) -> keras.callbacks.BackupAndRestore:
  """The `fit` callback that checkpoints to and resumes from `folder`.

  `model` (built, in its strategy's scope) is checked against a checkpoint
  already there; see the module doc. With `steps_per_execution` > 1, Keras
  calls callbacks once per execution, so `steps` is rounded up to whole
  executions.
  """
  if folder.exists() and not _is_checkpoint_folder(folder):
    raise CheckpointError(f"{folder}: exists and is not a folder of tfmtl's training "
                          "checkpoints, so tfmtl will not use or remove it; move it away")
  if not resume:
    shutil.rmtree(folder, ignore_errors=True)
  read_epochs(folder / "history.json")  # unreadable: an error now, not after training
  latest = check_resumable(model, folder)
  if latest:
    logger.info("resuming from %s", latest)
  executions = -(-steps // steps_per_execution)
  return keras.callbacks.BackupAndRestore(str(folder), save_freq=executions or "epoch")


class EpochHistory(keras.callbacks.Callback):
  """Keeps each completed epoch's logs in `<folder>/history.json`; when
  training completes, the epochs run before a resume join `model.history`
  (Keras' `History` holds only this `fit`'s), and the file is removed. It
  comes before `BackupAndRestore` among the callbacks, so an epoch's logs
  are kept before its end-of-epoch checkpoint is."""

  def __init__(self, folder: Path):
    super().__init__()
    self.path = Path(folder) / "history.json"

  def on_train_begin(self, logs=None):
    self.epochs = read_epochs(self.path)

  def on_epoch_end(self, epoch, logs=None):
    self.epochs[str(epoch)] = {name: float(value) for name, value in (logs or {}).items()}
    if is_chief():
      self.path.parent.mkdir(parents=True, exist_ok=True)
      atomic.write_text(self.path, json.dumps(self.epochs))

  def on_train_end(self, logs=None):
    history = self.model.history  # Keras' `History` of this `fit`
    earlier = sorted(e for e in map(int, self.epochs) if e not in history.epoch)
    logs = [self.epochs[str(epoch)] for epoch in earlier]
    for name in dict.fromkeys(name for epoch in logs for name in epoch):
      history.history[name] = ([epoch[name] for epoch in logs if name in epoch]
                               + history.history.get(name, []))
    history.epoch = earlier + history.epoch
    self.path.unlink(missing_ok=True)


def read_epochs(path: Path) -> dict:
  """The epochs' logs `EpochHistory` kept in `path` ({} if there is none)."""
  if not path.is_file():
    return {}
  try:
    epochs = json.loads(path.read_text())
  except (ValueError, OSError) as error:
    raise CheckpointError(f"{path}: the logs of the epochs trained before a crash cannot "
                          f"be read ({error}). "
                          + _REMEDY.format(folder=path.parent)) from None
  if not isinstance(epochs, dict):
    raise CheckpointError(f"{path}: expected a mapping of epochs to their logs. "
                          + _REMEDY.format(folder=path.parent))
  return epochs


def _is_checkpoint_folder(folder: Path) -> bool:
  """Whether `folder` holds only what `fit` writes there: Keras' `chief`
  (and other workers' `workertemp_*`) folders and `history.json`."""
  return folder.is_dir() and all(
      entry.name in ("chief", "history.json", ".history.json.tmp")
      or entry.name.startswith("workertemp") for entry in folder.iterdir())


def check_resumable(model, folder: Path) -> Optional[str]:
  """The checkpoint in `folder` that `model` will resume from, read into it
  to prove it can be; None when there is none."""
  chief = folder / "chief"
  index = chief / "checkpoint"
  if not chief.is_dir() or not any(chief.iterdir()):
    return None
  if not index.exists():
    # TensorFlow writes the index last: training stopped inside the first checkpoint.
    logger.info("%s: no checkpoint was completed before training stopped; training from "
                "the start", chief)
    if is_chief():
      shutil.rmtree(chief, ignore_errors=True)
    return None
  try:
    state = tf.train.get_checkpoint_state(str(chief))
  except ValueError:  # an index without a checkpoint path
    state = None
  if state is None:
    raise CheckpointError(f"{index}: training checkpoints are there but their index "
                          "cannot be read. " + _REMEDY.format(folder=folder))
  latest = tf.train.latest_checkpoint(str(chief))
  if latest is None:
    raise CheckpointError(f"{index}: names the checkpoint {state.model_checkpoint_path}, "
                          "whose files are missing. " + _REMEDY.format(folder=folder))
  try:
    saved = _model_variables(latest)
    _read_every_tensor(latest)  # the optimizer's part too: Keras restores it later
  except (ValueError, IndexError, tf.errors.OpError) as error:
    _cannot_resume(latest, folder, error, "It is corrupt")
  with tempfile.TemporaryDirectory() as scratch:
    own = _model_variables(tf.train.Checkpoint(model=model).write(f"{scratch}/model"))
  if saved != own:
    name = min(set(saved.items()) ^ set(own.items()))[0]
    raise CheckpointError(
        f"{latest}: cannot resume training from this checkpoint: it was written for "
        f"another model ({name} is {saved.get(name, 'missing')} there, "
        f"{own.get(name, 'missing')} in this config's model). "
        + _REMEDY.format(folder=folder))
  try:
    status = tf.train.Checkpoint(model=model).read(latest)
    status.expect_partial()  # the optimizer's slots: Keras restores them
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, IndexError, KeyError, tf.errors.OpError) as error:
    _cannot_resume(latest, folder, error, "It is corrupt")
  return latest


def resume_point(folder: Path, steps_per_epoch: int, by_steps: bool) -> tuple[int, int]:
  """The (epoch, step) that `fit` resumes at from the latest checkpoint in
  `folder`, by Keras' `BackupAndRestore` rule ((0, 0) without one);
  `by_steps`: checkpoints are written every N steps, not every epoch."""
  latest = tf.train.latest_checkpoint(str(Path(folder) / "chief"))
  if latest is None:
    return 0, 0
  reader = tf.train.load_checkpoint(latest)
  epoch, batch = (int(reader.get_tensor(f"ckpt_saved_{name}/.ATTRIBUTES/VARIABLE_VALUE"))
                  for name in ("epoch", "batch"))
  if by_steps and batch >= 0:
    return (epoch + 1, 0) if batch == steps_per_epoch - 1 else (epoch, batch + 1)
  return epoch + 1 if epoch >= 0 else 0, 0


def _read_every_tensor(checkpoint: str) -> None:
  """Reads every value in `checkpoint`, whose checksums TensorFlow verifies."""
  reader = tf.train.load_checkpoint(checkpoint)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)


def _model_variables(checkpoint: str) -> dict[str, tuple]:
  """The model's (not the optimizer's) variables in a checkpoint: name -> shape."""
  return {name.split("/.ATTRIBUTES")[0]: tuple(shape)
          for name, shape in tf.train.list_variables(checkpoint)
          if name.startswith("model/") and "optimizer" not in name}


def _cannot_resume(checkpoint: str, folder: Path, error: Exception, why: str):
  reason = str(error).strip().splitlines()[0][:300]
  raise CheckpointError(f"{checkpoint}: cannot resume training from this checkpoint "
                        f"({reason}). {why}. " + _REMEDY.format(folder=folder)) from None


_REMEDY = "Remove {folder} (or set train.resume=false) to train from the start."
