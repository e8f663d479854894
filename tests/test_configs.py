"""The shipped config files load, and the main one states the defaults."""

from pathlib import Path

import pytest

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
  import yaml
  path = Path(__file__).resolve().parents[1] / "configs" / "movielens_100k.yaml"
  written = yaml.safe_load(path.read_text())
  def keys(tree: dict, prefix: str = "") -> set[str]:
    return {name for key, value in tree.items() for name in
            ({prefix + key} | (keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                               and key != "tasks" else set()))}
  assert keys(yaml.safe_load(ExperimentConfig().to_yaml())) - keys(written) == set()
