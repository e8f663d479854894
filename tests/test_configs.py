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
