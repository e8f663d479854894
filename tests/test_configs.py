"""The shipped config files load, and the main one states the defaults."""

from pathlib import Path

import pytest
import yaml

from tfmtl.config import ExperimentConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_loads(path):
  ExperimentConfig.from_file(path)


def test_main_config_spells_out_the_defaults():
  path = Path(__file__).resolve().parents[1] / "configs" / "movielens_100k.yaml"
  assert ExperimentConfig.from_file(path) == ExperimentConfig()


def test_main_config_lists_every_key_as_the_config_reference():
  """Every key of every section is written out (the README points to this
  file as the reference), down to the maps whose entries are the user's."""
  path = Path(__file__).resolve().parents[1] / "configs" / "movielens_100k.yaml"
  written = _keys(yaml.safe_load(path.read_text()))
  assert _keys(yaml.safe_load(ExperimentConfig().to_yaml())) - written == set()


def _keys(tree: dict, prefix: str = "") -> set[str]:
  """Dotted names of every key, nested sections included (not tasks' own)."""
  names = set()
  for key, value in tree.items():
    names.add(prefix + key)
    if isinstance(value, dict) and key != "tasks":
      names |= _keys(value, f"{prefix}{key}.")
  return names


def test_the_movielens_files_example_reads_movielens_as_the_built_in_source(tmp_path, movielens):
  """configs/movielens_100k_files.yaml beside MovieLens-shaped CSV files (a
  fifth of the ratings, to train one epoch quickly) reads them with the
  built-in source's encodings, and trains."""
  import shutil
  import numpy as np
  from tfmtl import training
  example = Path(__file__).resolve().parents[1] / "configs" / "movielens_100k_files.yaml"
  shutil.copy(example, tmp_path / example.name)
  ratings = movielens.interactions.iloc[::5]
  ratings.to_csv(tmp_path / "ratings.csv", index=False)
  movielens.users.to_csv(tmp_path / "users.csv", index=False)
  movielens.items.to_csv(tmp_path / "items.csv", index=False)
  config = ExperimentConfig.from_file(tmp_path / example.name).with_overrides(
      ["train.epochs=1", "train.validate_every=0", f"train.run_dir={tmp_path / 'run'}"])
  prepared = training.prepare(config)
  assert prepared.data.user_features == movielens.user_features
  assert prepared.data.item_features == movielens.item_features
  assert len(prepared.data.interactions) == len(ratings)
  history = training.fit(config, prepared, verbose=0).history.history
  assert np.isfinite(history["loss"]).all()
