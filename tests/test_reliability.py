"""A user's data is never lost, and every failure is one line naming what failed.

Each case runs the `tfmtl` command (in this process unless a fresh one
matters) on real files, and checks the exit code, the one-line message and
that nothing else on disk changed. A full disk and a read-only folder come
from a small tmpfs mounted inside the test, where the machine allows it.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tfmtl import cli, runs, training


def _snapshot(folder: Path) -> dict:
  """Every file and folder under `folder`: relative path -> its content's digest."""
  return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest()
                                          if path.is_file() else "folder")
          for path in sorted(folder.rglob("*"))}


def _tfmtl(capsys, *args) -> tuple[int, list[str]]:
  """Runs the `tfmtl` command here; its exit code and the error lines it printed."""
  capsys.readouterr()
  code = cli.main(list(args))
  errors = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("tfmtl ")]
  return code, errors


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_data):
  """A folder with the tiny set as CSV files, its config, a trained run
  `runs/tiny` and an export of it, as a user's project would have them."""
  folder = tmp_path_factory.mktemp("project")
  for name, frame in (("ratings", tiny_data.interactions), ("users", tiny_data.users),
                      ("items", tiny_data.items)):
    frame.to_csv(folder / f"{name}.csv", index=False)
  (folder / "tiny.yaml").write_text(yaml.safe_dump({
      "name": "tiny",
      "data": {"source": "files", "interactions": "ratings.csv", "users": "users.csv",
               "items": "items.csv", "user_features": {"taste": "categorical"},
               "item_features": {"genres": "multi_categorical"}},
      "model": {"embedding_dim": 8},
      "train": {"epochs": 2, "batch_size": 64, "log_dir": ""},
      "evaluate": {"ks": [10]}}))
  with _inside(folder):
    assert cli.main(["train", "--config", "tiny.yaml"]) == 0
    assert cli.main(["export", "--run", "runs/tiny"]) == 0
  return folder


@contextlib.contextmanager
def _inside(folder: Path):
  before = os.getcwd()
  os.chdir(folder)
  try:
    yield folder
  finally:
    os.chdir(before)


@pytest.fixture
def user(project, tmp_path):
  """A copy of the project to work in (the current folder while the test runs)."""
  copy = tmp_path / "project"
  shutil.copytree(project, copy)
  with _inside(copy):
    yield copy


@contextlib.contextmanager
def _small_filesystem(folder: Path, size: str):
  """A tmpfs of `size` mounted at `folder` (skips the test where mounting is
  not allowed)."""
  folder.mkdir(parents=True, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(folder)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
  try:
    yield folder
  finally:
    subprocess.run(["umount", "-l", str(folder)], check=True)


# Input that was accepted silently, or named nothing


def _damage(user: Path, case: str) -> list[str]:
  """Damages the project as `case` says; the command's extra arguments."""
  if case == "nan":
    return ["--set", "train.learning_rate=.nan"]
  if case == "binary":
    (user / "tiny.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
  elif case == "duplicate":
    with open(user / "tiny.yaml", "a") as config:
      config.write("seed: 1\nseed: 2\n")
  elif case == "short_user_row":
    with open(user / "users.csv", "a") as users:
      users.write("u999\n")
  elif case == "no_rating":
    import pandas as pd
    pd.read_csv(user / "ratings.csv").drop(columns="rating").to_csv(user / "ratings.csv",
                                                                     index=False)
  return []


@pytest.mark.parametrize("case, message", [
    ("nan", "train.learning_rate: expected a finite number, got nan"),
    ("binary", "tiny.yaml: not a text YAML file ("),
    ("duplicate", "tiny.yaml: key 'seed' appears twice (lines "),
    ("short_user_row", "line 62 of users.csv: 1 field, expected 3 (user_id, taste, age)"),
    ("no_rating", "tasks.rating.label: column 'rating' is not in ratings.csv"),
])
def test_bad_input_is_one_line_naming_it_and_changes_nothing(user, capsys, case, message):
  extra = _damage(user, case)
  before = _snapshot(user)
  code, errors = _tfmtl(capsys, "run", "--config", "tiny.yaml", *extra)
  assert code == 2 and len(errors) == 1 and message in errors[0], errors
  assert _snapshot(user) == before


def test_a_learning_rate_in_e_notation_trains(user, capsys):
  code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml", "--set", "train.epochs=1",
                        "--set", "train.learning_rate=1e-3")
  assert code == 0 and not errors
  assert "learning_rate: 0.001" in (user / "runs" / "tiny" / "config.yaml").read_text()


# Data loss


def test_a_run_named_dot_is_refused_and_other_runs_are_kept(user):
  """`name=.` had saved the run as `runs/` itself, deleting every other run."""
  before = _snapshot(user)
  result = subprocess.run([sys.executable, "-m", "tfmtl.cli", "train", "--config", "tiny.yaml",
                           "--set", "name=."], capture_output=True, text=True, cwd=user,
                          timeout=300)
  assert result.returncode == 2  # TensorFlow's start-up lines may come before the error
  [line] = [line for line in result.stderr.splitlines() if line.startswith("tfmtl ")]
  assert line == result.stderr.strip().splitlines()[-1]
  assert line.startswith("tfmtl train: error: name: '.' ") and "Traceback" not in result.stderr
  assert _snapshot(user) == before


@pytest.mark.parametrize("override", ["name=..", "name=.hidden", "train.run_dir=..",
                                      "train.run_dir=runs/.."])
def test_names_that_are_not_a_folder_of_their_own_are_refused(user, capsys, override):
  before = _snapshot(user)
  code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml", "--set", override)
  key = override.split("=")[0]
  assert code == 2 and len(errors) == 1 and f"error: {key}: " in errors[0]
  assert _snapshot(user) == before


def test_a_run_dir_holding_a_users_files_is_never_replaced(user, capsys):
  mine = user / "myproject"
  mine.mkdir()
  (mine / "notes.txt").write_text("my notes")
  before = _snapshot(user)
  code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml",
                        "--set", "train.run_dir=myproject")
  assert code == 2
  assert errors == ["tfmtl train: error: myproject: exists and is not a tfmtl run (it has no "
                    "tfmtl_run.json), so tfmtl will not replace it; choose another name or "
                    "train.run_dir, or move that folder away"]
  assert _snapshot(user) == before
  assert not Path("myproject.checkpoints").exists()  # refused before training


def test_a_retrained_run_replaces_the_earlier_run(user, capsys):
  (user / "runs" / "tiny" / "stale.txt").write_text("from the earlier run")
  code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml", "--set", "train.epochs=1")
  assert code == 0 and not errors
  assert runs.is_run("runs/tiny") and not (user / "runs" / "tiny" / "stale.txt").exists()
  assert sorted(p.name for p in (user / "runs").iterdir()) == ["tiny"]  # nothing staged left


def test_a_failed_save_leaves_the_earlier_run_and_no_staging_folder(user, capsys, monkeypatch):
  before = _snapshot(user)

  def disk_full(*args):
    raise OSError(28, "No space left on device", "runs/.tiny.tmp/weights")
  monkeypatch.setattr(runs, "_write_run", disk_full)
  code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml", "--set", "train.epochs=1")
  assert code == 2
  assert errors == ["tfmtl train: error: runs/.tiny.tmp/weights: No space left on device"]
  assert _snapshot(user) == before


# TensorFlow's I/O errors


def test_export_into_a_read_only_model_folder_is_one_line(user, capsys):
  model_dir = user / "saved_models" / "tiny"
  saved = user / "saved"
  shutil.copytree(model_dir, saved)
  with _small_filesystem(model_dir, "50m"):
    shutil.copytree(saved, model_dir, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(model_dir)], check=True)
    before = _snapshot(user)
    code, errors = _tfmtl(capsys, "export", "--run", "runs/tiny")
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("tfmtl export: error: saved_models/tiny/2: not exported, and "
                                "saved_models is as it was: ")
    assert "Read-only file system" in errors[0] and "function_node" not in errors[0]
    assert _snapshot(user) == before


def test_export_onto_a_full_disk_leaves_the_base_path_as_it_was(user, capsys):
  base = user / "full"
  with _small_filesystem(base, "300k"):
    (base / "other_model").mkdir()
    (base / "other_model" / "keep.txt").write_text("another model's file")
    before = _snapshot(user)
    code, errors = _tfmtl(capsys, "export", "--run", "runs/tiny", "--base-path", "full")
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("tfmtl export: error: full/tiny/1: not exported, and full is "
                                "as it was: ")
    assert "No space left on device" in errors[0] or "out of space" in errors[0].lower()
    assert _snapshot(user) == before



def test_a_full_disk_once_the_version_is_written_leaves_the_base_path_as_it_was(user, capsys):
  """The version fits, `models.config` does not: neither is left."""
  pages = sum(-(-path.stat().st_size // 4096) for path in
              (user / "saved_models" / "tiny" / "1").rglob("*") if path.is_file())
  base = user / "full"
  with _small_filesystem(base, str(pages * 4096)):
    before = _snapshot(user)
    code, errors = _tfmtl(capsys, "export", "--run", "runs/tiny", "--base-path", "full")
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("tfmtl export: error: full/tiny/1: not exported, and full is "
                                "as it was: ")
    assert "No space left on device" in errors[0] and "models.config" in errors[0]
    assert _snapshot(user) == before

def test_checkpointing_onto_a_full_disk_is_one_line_naming_the_file(user, capsys):
  with _small_filesystem(user / "small", "64k"):
    code, errors = _tfmtl(capsys, "train", "--config", "tiny.yaml",
                          "--set", "train.run_dir=small/run")
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("tfmtl train: error: small/run.checkpoints/")
    assert "No space left on device" in errors[0] and "[Op:" not in errors[0]
    assert not (user / "small" / "run").exists()



class _Crash(Exception):
  pass


def test_a_corrupt_checkpoint_is_the_last_line_printed(user, capfd):
  """No TensorFlow warnings about unrestored values follow the error."""
  import gc

  import tf_keras as keras
  from tfmtl.config import ExperimentConfig

  class CrashAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      raise _Crash()
  config = ExperimentConfig.from_file("tiny.yaml")
  with pytest.raises(_Crash):
    training.fit(config, training.prepare(config), verbose=0,
                 callbacks=[CrashAfterFirstEpoch()])
  [data] = Path("runs/tiny.checkpoints/chief").glob("ckpt-1.data-*")
  raw = data.read_bytes()
  data.write_bytes(raw[:len(raw) // 2] + bytes(64) + raw[len(raw) // 2 + 64:])
  capfd.readouterr()
  code = cli.main(["train", "--config", "tiny.yaml"])
  gc.collect()  # unrestored checkpoint values would warn when collected
  lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
  assert code == 2
  assert lines[-1].startswith("tfmtl train: error: runs/tiny.checkpoints/chief/ckpt-1: cannot "
                              "resume training from this checkpoint (")
  assert lines[-1].endswith("It is corrupt. Remove runs/tiny.checkpoints (or set "
                            "train.resume=false) to train from the start.")

# Splits and numbers that cannot work


@pytest.mark.parametrize("overrides, why", [
    (["split.fractions=[1.0, 0.0, 0.0]"],
     "split: the test part is empty: split.fractions [1.0, 0.0, 0.0] gives it none"),
    (["data.interactions=first.csv"],
     "split: the test part is empty: split.protocol per_user cuts each user's interactions, "
     "and no user has enough for a test one (the most any user has: 1)"),
])
def test_an_empty_test_split_fails_before_training(user, capsys, overrides, why):
  import pandas as pd
  ratings = pd.read_csv(user / "ratings.csv")
  ratings.drop_duplicates("user_id").to_csv(user / "first.csv", index=False)
  before = _snapshot(user)
  code, errors = _tfmtl(capsys, "run", "--config", "tiny.yaml",
                        *[arg for o in overrides for arg in ("--set", o)])
  assert code == 2 and errors == [f"tfmtl run: error: {why}"]
  assert _snapshot(user) == before


def test_a_diverging_loss_stops_training_and_saves_nothing(user, capsys):
  before = _snapshot(user)
  code, errors = _tfmtl(capsys, "run", "--config", "tiny.yaml",
                        "--set", "train.learning_rate=1e8")
  assert code == 2 and len(errors) == 1
  assert errors[0].startswith("tfmtl run: error: training diverged in epoch 1: ")
  assert "_loss nan" in errors[0]
  assert "nothing was saved. Lower train.learning_rate (now 1e+08)" in errors[0]
  assert _snapshot(user) == before


def test_a_content_table_never_replaces_a_users_folder(tmp_path):
  import numpy as np
  from tfmtl.content import ItemContentTable
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("my notes")
  table = ItemContentTable(["i1"], np.zeros((1, 4), np.float32), "minilm", "{title}", 8)
  with pytest.raises(FileExistsError, match=f"^{mine}: exists and is not what tfmtl writes"):
    table.save(mine)
  assert [p.name for p in tmp_path.iterdir()] == ["mine"]
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]
  table.save(tmp_path / "table")
  table.save(tmp_path / "table")  # a table replaces a table
  assert ItemContentTable.load(tmp_path / "table").item_ids == ["i1"]
