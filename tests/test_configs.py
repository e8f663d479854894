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
