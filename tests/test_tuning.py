"""KerasTuner search over a config's `tune.space`: real trials on the tiny set."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
import yaml

from tfmtl import evaluation, runs, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.tuning import Search, objective

SPACE = {"model": {"embedding_dim": [4, 16], "tower_layers": [[], [32, 16]]},
         "train": {"learning_rate": {"min": 0.005, "max": 0.05, "sampling": "log"}}}


@pytest.fixture
def config_file(tiny_config_file, tmp_path):
  return tiny_config_file(
      split={"fractions": [0.7, 0.3, 0.0]},
      tune={"space": SPACE, "max_trials": 3, "directory": str(tmp_path / "tuning")})


def _validation_metrics(config, prepared, model):
  return evaluation.evaluate_model(model, prepared.data,
                                   evaluation.on_validation(prepared.split), config.evaluate.ks)


def _tfmtl(*args, cwd, env=None, timeout=600):
  return subprocess.Popen([sys.executable, "-m", "tfmtl.cli", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, **(env or {})})


def _finished(process, timeout=900):
  stdout, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-3000:]
  return stdout, stderr


@pytest.mark.slow
def test_the_best_config_retrains_to_the_reported_metric(config_file, tmp_path,
                                                        is_nonempty_png, tfmtl_cli):
  tuned = tfmtl_cli("tune", "--config", config_file, cwd=tmp_path)
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  stdout = tuned.stdout
  best_path = tmp_path / "tuning" / "tiny" / "best.yaml"
  assert f"retrain it with: tfmtl train --config {best_path}" in stdout
  reported = float(stdout.split("recall@10 = ")[1].split()[0])
  trials = [json.loads(path.read_text())
            for path in (tmp_path / "tuning" / "tiny").glob("trial_*/trial.json")]
  assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
  scores = [t["score"] for t in trials]
  assert reported == pytest.approx(max(scores), abs=1e-4)
  assert min(scores) > 0.1 and len(set(scores)) > 1  # real, differing validation scores
  best = ExperimentConfig.from_file(best_path)
  best_trial = max(trials, key=lambda t: t["score"])["hyperparameters"]["values"]
  assert best.model.embedding_dim == best_trial["model.embedding_dim"]
  assert best.train.learning_rate == pytest.approx(best_trial["train.learning_rate"])
  report = tmp_path / "tuning" / "tiny" / "report"
  assert f"Report: {report / 'report.md'}" in stdout
  for plot in ("trials.png", "importance.png", "tradeoff.png"):
    assert is_nonempty_png(report / plot), plot
  assert "| trial | recall@10 | model.embedding_dim |" in (report / "report.md").read_text()
  hparams = list((tmp_path / "tuning" / "tiny").glob("trial_*/logs/tiny/events.out.tfevents.*"))
  assert len(hparams) == 3  # each trial's values and metrics for TensorBoard's HParams view
  summaries = [value for path in hparams
               for event in tf.compat.v1.train.summary_iterator(str(path))
               for value in event.summary.value]
  assert "hparams" in {value.metadata.plugin_data.plugin_name for value in summaries}
  assert "recall@10" in {value.tag for value in summaries}
  # KerasTuner's get_best_models: the best trial's own trained model, as scored
  base = ExperimentConfig.from_file(config_file)
  search = Search(base)  # resumes the finished search
  best_trial_id = max(trials, key=lambda t: t["score"])["trial_id"]
  assert f"Its trained model: {search.trial_run_dir(best_trial_id)}" in stdout
  [best_model] = search.get_best_models(1)
  rescored = _validation_metrics(base, training.prepare(base), best_model)["recall@10"]
  assert rescored == pytest.approx(reported, abs=1e-4)
  # `tfmtl train --config best.yaml` reproduces the trial
  assert tfmtl_cli("train", "--config", best_path, cwd=tmp_path).returncode == 0
  config, model = runs.load_run(tmp_path / "runs" / "tiny")
  retrained = _validation_metrics(config, training.prepare(config), model)["recall@10"]
  assert retrained == pytest.approx(reported, abs=0.02)


class _Interrupt(BaseException):
  """Stops a search the way Ctrl-C or a kill would: not a failed trial."""


def test_an_interrupted_search_resumes_without_repeating_finished_trials(
    config_file, monkeypatch):
  config = ExperimentConfig.from_file(config_file).with_overrides(["tune.max_trials=3"])
  prepared = training.prepare(config)
  fitted = []
  fit = training.fit

  def fit_then_stop_in_the_second_trial(trial_config, *args, **kwargs):
    fitted.append(trial_config.train.run_dir)
    if len(fitted) == 2:
      raise _Interrupt()
    return fit(trial_config, *args, **kwargs)

  monkeypatch.setattr(training, "fit", fit_then_stop_in_the_second_trial)
  with pytest.raises(_Interrupt):
    Search(config).search(prepared, verbose=0)
  assert [run.split("/")[-2] for run in fitted] == ["trial_0", "trial_1"]
  resumed = Search(config)  # a new process would do the same: reload from the folder
  resumed.search(prepared, verbose=0)
  # trial 1 is run again (it was interrupted), trial 0 is not, trial 2 is new
  assert [run.split("/")[-2] for run in fitted[2:]] == ["trial_1", "trial_2"]
  assert sorted(resumed.oracle.trials) == ["0", "1", "2"]
  assert all(t.status == "COMPLETED" for t in resumed.oracle.trials.values())
  # A state file cut short by a crash is named, not a bare JSON error.
  oracle_file = Path(resumed.project_dir) / "oracle.json"
  oracle_file.write_text(oracle_file.read_text()[:40])
  with pytest.raises(ConfigError, match=r"oracle.json: the search's saved state is damaged"
                                        r".*--overwrite"):
    Search(config)


def test_the_search_uses_the_configured_seed(config_file):
  """KerasTuner would draw a random seed for a falsy one."""
  config = ExperimentConfig.from_file(config_file)
  assert Search(config).oracle.seed == config.tune.seed == 1
  zero = config.with_overrides(["tune.seed=0"])  # still a config (old runs saved it)
  with pytest.raises(ConfigError, match=r"tune.seed: must be at least 1 \(KerasTuner draws"):
    Search(zero)


def test_a_search_interrupted_in_its_first_trial_starts_over(config_file, monkeypatch):
  """KerasTuner saves its tuner only when a trial ends: without it, a new
  search would train its first trial over the old one's checkpoints."""
  config = ExperimentConfig.from_file(config_file).with_overrides(["tune.max_trials=1"])
  prepared = training.prepare(config)
  fit = training.fit
  monkeypatch.setattr(training, "fit", lambda *args, **kwargs: (_ for _ in ()).throw(
      _Interrupt()))
  search = Search(config)
  with pytest.raises(_Interrupt):
    search.search(prepared, verbose=0)
  leftover = search.trial_run_dir("0").with_name("run.checkpoints") / "chief" / "ckpt-1.index"
  leftover.parent.mkdir(parents=True)
  leftover.write_bytes(b"from another trial's values")
  monkeypatch.setattr(training, "fit", fit)
  again = Search(config)
  assert not leftover.exists()
  again.search(prepared, verbose=0)
  assert [t.status for t in again.oracle.trials.values()] == ["COMPLETED"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["bayesian", "hyperband"])
def test_bayesian_optimization_and_hyperband_search(config_file, algorithm, tmp_path):
  config = ExperimentConfig.from_file(config_file).with_overrides(
      [f"tune.algorithm={algorithm}", "tune.max_trials=3", "tune.max_epochs=3",
       "tune.objective={recall@10: 1.0, rating_rmse: -0.5}", "tune.direction=max"])
  search = Search(config)
  search.search(training.prepare(config), verbose=0)
  trials = [t for t in search.oracle.trials.values() if t.status == "COMPLETED"]
  assert len(trials) >= 3
  for trial in trials:
    metrics = {name: trial.metrics.get_last_value(name) for name in ("recall@10", "rating_rmse")}
    assert trial.score == pytest.approx(metrics["recall@10"] - 0.5 * metrics["rating_rmse"],
                                        abs=1e-5)
  best = search.best_config()
  if algorithm == "hyperband":  # epochs come from the bracket
    assert best.train.epochs in (1, 3)
    assert {t.hyperparameters.values["tuner/epochs"] for t in trials} <= {1, 3}


@pytest.mark.slow
def test_a_chief_and_two_workers_search_together(config_file, tmp_path, tfmtl_cli, monkeypatch):
  """Two `tfmtl tune` worker processes take trials from the chief's oracle,
  which runs in this process (as `tfmtl tune` with the chief's variables)."""
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  def env(tuner_id):
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port)}
  args = ("tune", "--config", str(config_file), "--set", "tune.max_trials=3")
  workers = [_tfmtl(*args, cwd=tmp_path, env=env(f"tuner{i}")) for i in range(2)]
  for name, value in env("chief").items():
    monkeypatch.setenv(name, value)
  chief = tfmtl_cli(*args, cwd=tmp_path)
  worker_logs = [_finished(worker)[1] for worker in workers]
  assert chief.returncode == 0, chief.stderr[-3000:]
  assert "Best trial" in chief.stdout and (tmp_path / "tuning" / "tiny" / "best.yaml").is_file()
  ran = [{line.split()[2].rstrip(":") for line in log.splitlines()
          if line.startswith("INFO trial ")} for log in worker_logs]
  assert all(ran), worker_logs[0][-2000:]  # both workers ran trials
  assert not ran[0] & ran[1] and len(ran[0] | ran[1]) == 3


def test_a_space_key_that_is_not_a_config_key_is_named(tmp_path):
  config = ExperimentConfig().with_overrides(["tune.space.model.embeding_dim=[8, 16]"])
  with pytest.raises(ConfigError, match="tune.space.model.embeding_dim: .*unknown key "
                                        "'model.embeding_dim'"):
    Search(config)


@pytest.mark.parametrize("overrides, message", [
    (["tune.space.model.embedding_dim=16"], "tune.space.model.embedding_dim: expected a list"),
    (["tune.space.train.learning_rate={min: 0.1, max: 0.01}"], "min must be below max"),
    (["tune.algorithm=grid"], "tune.algorithm: unknown value 'grid'"),
    (["tune.objective=[recall@10]"], "tune.objective: expected a metric name"),
])
def test_a_malformed_tune_section_is_a_config_error(overrides, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig().with_overrides(overrides)


@pytest.mark.parametrize("objective_value", ["recall@5", "{recall@10: 1, lik_auc: 1}"])
def test_an_objective_evaluation_does_not_give_is_named_before_any_trial(objective_value):
  config = ExperimentConfig().with_overrides([f"tune.objective={objective_value}",
                                              "tune.direction=max"])
  with pytest.raises(ConfigError, match=r"tune.objective: '(recall@5|lik_auc)' is not a "
                                        r"validation metric .* expected one of top10_accuracy, .*"
                                        r"recall@10, .*like_auc"):
    objective(config)


def test_the_direction_is_known_for_metric_names_and_asked_for_blends():
  assert objective(ExperimentConfig()).direction == "max"
  rmse = ExperimentConfig().with_overrides(["tune.objective=rating_rmse"])
  assert objective(rmse).direction == "min"
  blend = ExperimentConfig().with_overrides(["tune.objective={recall@10: 1, like_auc: 1}"])
  with pytest.raises(ConfigError, match="tune.direction: say max or min for the objective "
                                        "'blend'"):
    objective(blend)
  assert yaml.safe_load(blend.with_overrides(["tune.direction=max"]).to_yaml())["tune"][
      "direction"] == "max"
