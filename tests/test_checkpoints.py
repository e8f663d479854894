"""Crash-safe training: checkpoints, resuming, and checkpoints that cannot be."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tf_keras as keras
import yaml

from tfmtl import training
from tfmtl.checkpoints import CheckpointError, checkpoint_folder
from tfmtl.config import ExperimentConfig


class _Crash(Exception):
  pass


class _CrashAfterEpoch(keras.callbacks.Callback):
  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.epoch:
      raise _Crash(f"crashed after epoch {epoch + 1}")


def _config(run_dir, *overrides):
  return ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=4", "train.batch_size=64",
      f"train.run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_prepared):
  """The checkpoint folder a run left when it crashed after epoch 2 of 4."""
  run_dir = tmp_path_factory.mktemp("crashed") / "run"
  with pytest.raises(_Crash):
    training.fit(_config(run_dir), tiny_prepared, verbose=0, callbacks=[_CrashAfterEpoch(1)])
  return checkpoint_folder(run_dir)


def _copy(crashed, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(crashed, checkpoint_folder(run_dir))
  return run_dir


def test_a_crash_leaves_the_checkpoint_of_the_last_epoch(crashed):
  assert (crashed / "chief" / "checkpoint").read_text().startswith(
      'model_checkpoint_path: "ckpt-2"')


def test_a_rerun_resumes_without_repeating_completed_epochs(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  started = []
  count = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: started.append(epoch))
  logs_more = keras.callbacks.LambdaCallback(  # a user's callback, after tfmtl's
      on_epoch_end=lambda epoch, logs: logs.update(epoch_again=float(epoch)))
  model = training.fit(_config(run_dir), tiny_prepared, verbose=0, callbacks=[count, logs_more])
  assert started == [2, 3]
  # The history holds the epochs before the crash too, as the run left them.
  kept = json.loads((crashed / "history.json").read_text())
  assert model.history.epoch == [0, 1, 2, 3]
  assert model.history.history["rating_loss"][:2] == [kept[e]["rating_loss"] for e in "01"]
  assert model.history.history.pop("epoch_again") == [2.0, 3.0]
  assert all(len(values) == 4 for values in model.history.history.values())
  assert not checkpoint_folder(run_dir).exists()  # removed once training completes


def test_a_crash_after_the_last_checkpoint_reruns_nothing_and_keeps_the_history(
    tiny_prepared, tmp_path):
  run_dir = tmp_path / "run"
  with pytest.raises(_Crash):
    training.fit(_config(run_dir), tiny_prepared, verbose=0, callbacks=[_CrashAfterEpoch(3)])
  model = training.fit(_config(run_dir), tiny_prepared, verbose=0)
  assert model.history.epoch == [0, 1, 2, 3]
  assert all(len(values) == 4 for values in model.history.history.values())


def test_a_crash_inside_the_first_checkpoint_trains_from_the_start(tiny_prepared, tmp_path):
  """TensorFlow writes a checkpoint's index last: files without one were cut short."""
  run_dir = tmp_path / "run"
  partial = checkpoint_folder(run_dir) / "chief" / "ckpt-1_temp"
  partial.mkdir(parents=True)
  (partial / "part-00000-of-00001.index").write_bytes(b"\0" * 10)
  model = training.fit(_config(run_dir), tiny_prepared, verbose=0)
  assert model.history.epoch == [0, 1, 2, 3]
  assert not checkpoint_folder(run_dir).exists()


def test_an_index_naming_missing_files_is_an_error_naming_them(crashed, tiny_prepared,
                                                                 tmp_path):
  run_dir = _copy(crashed, tmp_path)
  for data in (checkpoint_folder(run_dir) / "chief").glob("ckpt-2.*"):
    data.unlink()
  with pytest.raises(CheckpointError, match=r"chief/checkpoint: names the checkpoint "
                                            r"\S*ckpt-2, whose files are missing"):
    training.fit(_config(run_dir), tiny_prepared, verbose=0)


def test_resume_false_starts_over(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  model = training.fit(_config(run_dir, "train.resume=false"), tiny_prepared, verbose=0)
  assert model.history.epoch == [0, 1, 2, 3]


def test_a_corrupt_checkpoint_is_an_error_naming_it(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  chief = checkpoint_folder(run_dir) / "chief"
  for data in chief.glob("ckpt-2.data-*"):
    data.write_bytes(data.read_bytes()[:100])
  with pytest.raises(CheckpointError, match=re.escape(str(chief / "ckpt-2")) + ".*corrupt"):
    training.fit(_config(run_dir), tiny_prepared, verbose=0)



def test_a_corrupt_optimizer_part_is_an_error_before_training(crashed, tiny_prepared, tmp_path):
  """The model's variables read fine; one of Adam's slots is damaged."""
  import tensorflow as tf
  run_dir = _copy(crashed, tmp_path)
  latest = tf.train.latest_checkpoint(str(checkpoint_folder(run_dir) / "chief"))
  reader = tf.train.load_checkpoint(latest)
  slot = next(name for name in sorted(reader.get_variable_to_shape_map())
              if "OPTIMIZER_SLOT" in name and reader.get_tensor(name).size >= 64)
  [data] = checkpoint_folder(run_dir).glob("chief/ckpt-2.data-*")
  raw = data.read_bytes()
  start = raw.index(reader.get_tensor(slot).tobytes())
  data.write_bytes(raw[:start] + bytes(64) + raw[start + 64:])
  with pytest.raises(CheckpointError, match=re.escape(latest) + r": cannot resume .*corrupt"):
    training.fit(_config(run_dir), tiny_prepared, verbose=0)


def test_unreadable_epoch_logs_are_an_error_naming_the_file(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  history = checkpoint_folder(run_dir) / "history.json"
  history.write_text('{"0": {"loss": 1.0')
  with pytest.raises(CheckpointError, match=re.escape(str(history)) + ": the logs of the "
                     r"epochs trained before a crash cannot be read \(.*\)\. Remove "):
    training.fit(_config(run_dir), tiny_prepared, verbose=0)


def test_a_folder_of_other_files_is_never_used_as_checkpoints(tiny_prepared, tmp_path):
  run_dir = tmp_path / "run"
  mine = checkpoint_folder(run_dir)
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(CheckpointError, match=re.escape(str(mine)) + ": exists and is not"):
    training.fit(_config(run_dir, "train.resume=false"), tiny_prepared, verbose=0)
  assert (mine / "notes.txt").read_text() == "mine"

def test_a_checkpoint_of_another_model_is_an_error_naming_it(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  with pytest.raises(CheckpointError, match=r"ckpt-2: cannot resume .*another model "
                     r"\(model/\S+ is \([\d, ]*8,?\) there, \([\d, ]*16,?\) in"):
    training.fit(_config(run_dir, "model.embedding_dim=16"), tiny_prepared, verbose=0)


def test_an_unreadable_index_is_an_error_not_a_fresh_start(crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  (checkpoint_folder(run_dir) / "chief" / "checkpoint").write_text("not a checkpoint state")
  with pytest.raises(CheckpointError, match=r"chief/checkpoint: .*index cannot be read"):
    training.fit(_config(run_dir), tiny_prepared, verbose=0)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_finishes_like_an_uninterrupted_run(
    tmp_path, tiny_frames, tfmtl_cli):
  """The killed run is a process of its own; its rerun (as a user would
  rerun it) and the uninterrupted run, the same `tfmtl train`, run in this
  one."""
  make_frames, _ = tiny_frames
  interactions, users, items = make_frames(num_users=1_000)  # 188 steps per epoch
  for name, frame in (("ratings", interactions), ("users", users), ("items", items)):
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
  config = {"name": "big", "data": {"source": "files", "interactions": "ratings.csv",
                                    "users": "users.csv", "items": "items.csv"},
            "split": {"fractions": [0.95, 0.05, 0.0]}, "evaluate": {"ks": [10]},
            "train": {"epochs": 3, "batch_size": 64}}
  (tmp_path / "big.yaml").write_text(yaml.safe_dump(config))
  train = [sys.executable, "-m", "tfmtl.cli", "train", "--config", "big.yaml"]
  state = tmp_path / "runs" / "big.checkpoints" / "chief" / "checkpoint"
  process = subprocess.Popen(train, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline, written = time.time() + 300, {}  # checkpoint -> when it was first seen
  while "ckpt-2" not in written:
    assert process.poll() is None and time.time() < deadline, "no checkpoint of epoch 2"
    latest = state.read_text().splitlines()[0] if state.exists() else ""
    for name in ("ckpt-1", "ckpt-2"):
      if f'"{name}"' in latest:
        written.setdefault(name, time.time())
    time.sleep(0.01)
  epoch_seconds = written["ckpt-2"] - written.get("ckpt-1", written["ckpt-2"] - 0.2)
  time.sleep(epoch_seconds / 2)  # half of the last epoch, however fast this machine is
  assert process.poll() is None
  os.kill(process.pid, signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL

  resumed = tfmtl_cli(*train[3:], cwd=tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from" in resumed.stderr and "ckpt-2" in resumed.stderr
  assert "Epoch 3/3" in resumed.stdout and "Epoch 2/3" not in resumed.stdout
  assert not state.parent.parent.exists()

  uninterrupted = tfmtl_cli(*train[3:], "--set", "train.run_dir=runs/uninterrupted",
                            cwd=tmp_path)
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  # Epoch 3 sees the batches it would have seen; float sums may round differently.
  after_crash, expected = (json.loads((tmp_path / "runs" / name / "history.json").read_text())
                           for name in ("big", "uninterrupted"))
  assert after_crash["epoch"] == expected["epoch"] == [0, 1, 2]
  for name in ("retrieval_loss", "rating_loss", "like_loss", "total_loss", "val_recall@10"):
    assert after_crash[name][-1] == pytest.approx(expected[name][-1], abs=0.01), name


class _Tables(keras.callbacks.Callback):
  """Keeps the shared tables as training starts (after any restore), and
  the epochs it runs."""

  def on_train_begin(self, logs=None):
    self.values = [v.numpy() for v in self.model.embedding_tables.variables]
    self.started = []

  def on_epoch_begin(self, epoch, logs=None):
    self.started.append(epoch)


def test_shared_tables_resume_where_a_crash_left_them(tiny_prepared, tmp_path):
  """`model.tpu_embedding`'s tables (TFRS's layer, off-TPU) come back from
  the checkpoint as they were when it was written."""
  config = _config(tmp_path / "run", "model.tpu_embedding=true")
  crash = _CrashAfterEpoch(1)
  with pytest.raises(_Crash):
    training.fit(config, tiny_prepared, verbose=0, callbacks=[crash])
  at_crash = [v.numpy() for v in crash.model.embedding_tables.variables]
  restored = _Tables()
  resumed = training.fit(config, tiny_prepared, verbose=0, callbacks=[restored])
  assert restored.started == [2, 3]
  assert len(restored.values) == 5
  for before, after in zip(at_crash, restored.values):
    np.testing.assert_array_equal(after, before)
  uninterrupted = training.fit(_config(tmp_path / "other", "model.tpu_embedding=true"),
                               tiny_prepared, verbose=0)
  # Epochs 3-4 see the batches they would have seen; float sums may round differently.
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    assert resumed.history.history[name][-1] == pytest.approx(
        uninterrupted.history.history[name][-1], rel=0.05), name


def test_a_checkpoint_without_shared_tables_does_not_resume_a_model_with_them(
    crashed, tiny_prepared, tmp_path):
  run_dir = _copy(crashed, tmp_path)
  with pytest.raises(CheckpointError, match=r"ckpt-2: cannot resume"):
    training.fit(_config(run_dir, "model.tpu_embedding=true"), tiny_prepared, verbose=0)
