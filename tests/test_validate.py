"""`tfmtl validate`: an export checked the way TF Serving will use it."""

import shutil

import numpy as np
import pytest

from tfmtl import runs as run_folders, training
from tfmtl.config import ExperimentConfig
from tfmtl.serving.export import export_configured
from tfmtl.serving.validate import validate_export


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_prepared):
  """Two runs of the same model trained with different seeds, each exported."""
  folder, prepared = tmp_path_factory.mktemp("runs"), tiny_prepared
  made = {}
  for seed in (0, 1):
    config = ExperimentConfig().with_overrides([
        "name=tiny", f"seed={seed}", "model.embedding_dim=8", "train.epochs=1",
        "export.recommend_candidates=10", "export.top_k=5"])
    model = training.fit(config, prepared, verbose=0)
    run = run_folders.save_run(folder / f"run{seed}", config, prepared, model)
    made[seed] = run, export_configured(model, config, folder / f"saved_models{seed}")
  return made


def test_an_export_passes_every_check(runs):
  run, export = runs[0]
  checks = validate_export(run, export)
  assert [check.name for check in checks] == [
      "saved_model_cli scan: no ops TF Serving refuses",
      "fresh process loads it and replays the warm-up requests",
      "signatures and inputs as documented", "every output is finite",
      "answers match the in-memory model"]
  assert all(check.passed for check in checks), checks
  assert "does not contain the default denylisted ops" in checks[0].detail
  assert "12 requests replayed without tfmtl" in checks[1].detail  # 6 signatures x 2 batches


def test_an_export_of_another_model_fails_the_answers_check(runs):
  run, _ = runs[0]
  _, other_export = runs[1]
  checks = {check.name: check for check in validate_export(run, other_export)}
  assert checks["signatures and inputs as documented"].passed
  failed = checks["answers match the in-memory model"]
  assert not failed.passed and "serving_default.scores (request 0)" in failed.detail


def test_an_export_whose_outputs_are_nan_fails_the_finite_check(runs, tmp_path):
  run, _ = runs[0]
  config, model = run_folders.load_run(run)  # a fresh copy of the run's model
  table = next(v for v in model.candidate_tower.variables if "item_id_embedding" in v.name)
  table.assign(np.full(table.shape, np.nan, np.float32))  # as weights that diverged
  checks = {check.name: check for check in validate_export(
      run, export_configured(model, config, tmp_path))}
  failed = checks["every output is finite"]
  assert not failed.passed and "not finite" in failed.detail
  assert "serving_default.scores (request 0)" in failed.detail


def test_a_folder_that_is_not_an_export_is_named(runs, tmp_path):
  run, _ = runs[0]
  with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
    validate_export(run, tmp_path)


@pytest.mark.slow
def test_an_export_a_fresh_process_cannot_load_is_one_clear_error(runs, tmp_path, capsys):
  from tfmtl.cli import main
  run, export = runs[0]
  broken = tmp_path / "1"
  shutil.copytree(export, broken)
  data = next((broken / "variables").glob("variables.data-*"))
  data.write_bytes(data.read_bytes()[:100])  # truncated, as by a copy that died
  assert main(["validate", "--run", str(run), "--export", str(broken)]) == 2
  error = capsys.readouterr().err
  assert f"tfmtl validate: error: {broken}: a fresh process could not load it" in error
  assert "Traceback" not in error and len(error.strip().splitlines()) == 1
