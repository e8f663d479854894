"""Shared fixtures: the real MovieLens 100K and a small structured data set."""

import collections
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import tfmtl
from tfmtl.config import FeatureConfig


if os.environ.get("PYTEST_XDIST_WORKER"):
  # Several test processes share the cores: one thread for each op's work in
  # this one, rather than pools that outnumber the cores. (Not for the
  # processes tests start, whose strategies' collectives need their threads.)
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)


def pytest_collection_modifyitems(items):
  """Files with the most slow tests run first (each file's tests in their
  order): with several test processes, each taking whole files, the longest
  start early and the processes finish together."""
  slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
  first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
  items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


@pytest.fixture(scope="session", autouse=True)
def scratch_working_folder(tmp_path_factory):
  """Each test process works in a folder of its own: what a test writes to a
  relative path (`runs/<name>`, `saved_models/`) lands there, never in the
  repository or beside another process's."""
  before = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("cwd"))
  yield
  os.chdir(before)


@pytest.fixture(scope="session")
def movielens():
  """The real MovieLens 100K (fetched once into the tfmtl cache dir)."""
  return tfmtl.data.load_movielens_100k()


def make_tiny_frames(num_users: int = 60, num_items: int = 40, per_user: int = 12,
                     seed: int = 0):
  """Users of three tastes rate items of their taste 4-5, others 1-2."""
  rng = np.random.default_rng(seed)
  rows = []
  for user in range(num_users):
    items = rng.choice(num_items, size=per_user, replace=False)
    for item in items:
      liked = item % 3 == user % 3
      rows.append((f"u{user}", f"i{item}",
                   float(rng.integers(4, 6) if liked else rng.integers(1, 3)),
                   int(1_000 + user * 100 + rng.integers(100))))
  interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
  users = pd.DataFrame({"user_id": [f"u{u}" for u in range(num_users)],
                        "taste": [f"t{u % 3}" for u in range(num_users)],
                        "age": rng.integers(18, 70, num_users).astype(float)})
  genres = ["Action", "Comedy", "Drama"]
  items = pd.DataFrame({"item_id": [f"i{i}" for i in range(num_items)],
                        "genres": [f"{genres[i % 3]}|Extra{i % 2}" for i in range(num_items)],
                        "year": (1950 + np.arange(num_items)).astype(float)})
  return interactions, users, items


TINY_USER_FEATURES = {"taste": FeatureConfig("categorical"),
                      "age": FeatureConfig("bucketized", num_buckets=4)}
TINY_ITEM_FEATURES = {"genres": FeatureConfig("multi_categorical"),
                      "year": FeatureConfig("bucketized", num_buckets=4)}


@pytest.fixture(scope="session")
def tiny_data():
  """A small, learnable data set with user and item features."""
  interactions, users, items = make_tiny_frames()
  return tfmtl.data.InteractionData.from_frames(
      interactions, users, items, TINY_USER_FEATURES, TINY_ITEM_FEATURES, name="tiny")


@pytest.fixture(scope="session")
def tiny_frames():
  """`make_tiny_frames` and the tiny user features, to build variants of the set."""
  return make_tiny_frames, TINY_USER_FEATURES


def _last_epoch_losses(stdout: str) -> dict:
  """Each task's mean loss over the last epoch `tfmtl train` printed."""
  line = [line for line in stdout.splitlines() if " - loss: " in line][-1]
  return {name: float(value) for name, value in re.findall(r"(\w+_loss): ([\d.]+)", line)
          if name not in ("total_loss", "regularization_loss")}


@pytest.fixture(scope="session")
def last_epoch_losses():
  """`_last_epoch_losses`: a training command's output -> its task losses."""
  return _last_epoch_losses


def _fresh_process(code: str) -> dict:
  """Runs `code` in a new Python that never imports tfmtl; returns its JSON."""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  guard = "import sys\nassert 'tfmtl' not in sys.modules\n"
  code = guard + code + "\nassert 'tfmtl' not in sys.modules"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd="/")
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def fresh_process():
  """`_fresh_process`: Python code -> the JSON it printed, run without tfmtl."""
  return _fresh_process


def _is_nonempty_png(path) -> bool:
  """A PNG whose pixels are not all one colour."""
  from matplotlib.image import imread
  return (path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
          and float(np.ptp(imread(path))) > 0)


@pytest.fixture(scope="session")
def is_nonempty_png():
  """`_is_nonempty_png`: a plot file -> whether it is a PNG with something drawn."""
  return _is_nonempty_png


@pytest.fixture
def tfmtl_cli(capsys, monkeypatch):
  """`run(*args, cwd)`: the `tfmtl` command run in this process, in folder
  `cwd`, as a `subprocess.CompletedProcess` (exit code, stdout, stderr).

  Its code path is `python -m tfmtl.cli`'s without a new TensorFlow start;
  with `--debug`, the exception propagates as it would to a traceback. Its
  log lines are on stderr, as in a process of its own (pytest's handlers
  make the command's `logging.basicConfig` do nothing). A few tests still
  run a fresh process, where that process is the point.
  """
  from tfmtl import cli

  def run(*args, cwd):
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    log = logging.StreamHandler(sys.stderr)
    log.setFormatter(logging.Formatter(cli.LOG_FORMAT))
    logging.getLogger("tfmtl").addHandler(log)
    try:
      code = cli.main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse's usage errors
      code = exit_.code
    finally:
      logging.getLogger("tfmtl").removeHandler(log)
    output = capsys.readouterr()
    return subprocess.CompletedProcess(["tfmtl", *args], code, output.out, output.err)
  return run


@pytest.fixture(scope="session")
def tiny_prepared(tiny_data):
  """The tiny set prepared for `training.fit`, all of it the training split."""
  from tfmtl import training
  from tfmtl.data import Split
  empty = tiny_data.interactions.iloc[:0]
  return training.Prepared(tiny_data, Split(tiny_data.interactions, empty, empty),
                           tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions))


def _write_tiny_config(folder, data, /, **sections):
  """The tiny set as CSV files in `folder` and a config reading them (2
  epochs of batch 64; `sections` update it); returns the config's path."""
  for name, frame in (("ratings", data.interactions), ("users", data.users),
                      ("items", data.items)):
    frame.to_csv(folder / f"{name}.csv", index=False)
  config = {
      "name": "tiny",
      "data": {"source": "files", "interactions": str(folder / "ratings.csv"),
               "users": str(folder / "users.csv"), "items": str(folder / "items.csv"),
               "user_features": {"taste": "categorical", "age": "bucketized"},
               "item_features": {"genres": "multi_categorical", "year": "bucketized"}},
      "train": {"epochs": 2, "batch_size": 64},
  }
  for section, values in sections.items():
    config[section] = {**config.get(section, {}), **values}
  path = folder / "tiny.yaml"
  path.write_text(yaml.safe_dump(config))
  return path


@pytest.fixture(scope="session")
def write_tiny_config(tiny_data):
  """`write(folder, **sections)`: `tiny_config_file`'s files in `folder`, for
  a fixture of wider scope than a test's tmp_path; returns the config's path."""
  return lambda folder, **sections: _write_tiny_config(folder, tiny_data, **sections)


@pytest.fixture
def tiny_config_file(tmp_path, tiny_data):
  """`write(**sections)`: the tiny set as CSV files in tmp_path and a config
  reading them (2 epochs of batch 64; `sections` update it); returns its path."""
  return lambda **sections: _write_tiny_config(tmp_path, tiny_data, **sections)
