"""The `tfmtl` command end to end on small files, and its error messages.

The commands run in this process (the `tfmtl_cli` fixture), which is
`python -m tfmtl.cli`'s code without TensorFlow's start-up each time; the
distribution and tuning tests run it as fresh processes, as does the one
test here about a fresh process's logging."""

import json
import subprocess
import sys

import pytest
import yaml


def _scalar_tags(event_files) -> set:
  import tensorflow as tf
  return {value.tag for path in event_files for event in tf.compat.v1.train.summary_iterator(
      str(path)) for value in event.summary.value}


@pytest.fixture
def config_file(tiny_config_file):
  return tiny_config_file()


@pytest.mark.slow
def test_run_trains_evaluates_exports_and_prints_metrics(tmp_path, config_file,
                                                        is_nonempty_png, tfmtl_cli):
  result = tfmtl_cli("run", "--config", str(config_file), "--set", "train.epochs=3",
                     cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "recall@10" in result.stdout and "rating_rmse" in result.stdout
  assert "popularity" in result.stdout
  assert (tmp_path / "saved_models" / "tiny" / "1" / "saved_model.pb").is_file()
  metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
  assert set(metrics) == {"model", "popularity", "ease"}  # the baselines
  assert set(metrics["ease"]) == set(metrics["popularity"])  # the retrieval metrics
  assert ["metric", "model", "popularity", "ease"] in [line.split()
                                                       for line in result.stdout.splitlines()]
  assert 0 <= metrics["model"]["ndcg@10"] <= 1
  assert yaml.safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())[
      "train"]["epochs"] == 3
  assert "Epoch 3/3" in result.stdout + result.stderr  # progress is visible
  # the history, the report and TensorBoard's logs
  history = json.loads((tmp_path / "runs" / "tiny" / "history.json").read_text())
  assert history["epoch"] == [0, 1, 2] and len(history["val_recall@10"]) == 3
  assert max(history["val_recall@10"]) > 0 and len(history["learning_rate"]) == 3
  report = tmp_path / "runs" / "tiny" / "report"
  assert "Report: runs/tiny/report/report.md" in result.stdout
  for plot in ("learning_curves.png", "metrics_at_k.png", "tradeoff.png"):
    assert is_nonempty_png(report / plot), plot
    assert f"]({plot})" in (report / "report.md").read_text()
  events = list((tmp_path / "logs" / "tiny").glob("*/events.out.tfevents.*"))
  assert {path.parent.name for path in events} == {"train", "validation"}
  assert _scalar_tags(events) >= {"epoch_retrieval_loss", "epoch_rating_weight",
                                  "epoch_learning_rate", "epoch_recall@10"}


def test_data_summarises_the_source(tmp_path, config_file, tfmtl_cli):
  result = tfmtl_cli("data", "--config", str(config_file), cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "720 interactions, 60 users" in result.stdout
  # A second config (a tuned model's, say) layers over the first: the data stays.
  (tmp_path / "model.yaml").write_text("model: {embedding_dim: 16}\n")
  result = tfmtl_cli("data", "--config", str(config_file), "--config", "model.yaml",
                     cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "720 interactions, 60 users" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "model.embeding_dim=3"], "unknown key 'model.embeding_dim'"),
    (["--set", "data.interactions=missing.csv"], "missing.csv: file not found"),
    (["--set", "train.optimizer=nesterov"], "train.optimizer: unknown optimizer 'nesterov'"),
    (["--set", "content.encoder=minilm", "--set", "content.table=no_table"],
     "no_table: not a readable item content table"),
    (["--set", "content.encoder=minilm", "--set", "content.text='{plot}'"],
     "content.text: '{plot}' names item column(s) ['plot']"),
])
def test_errors_are_one_clear_line_without_a_traceback(tmp_path, config_file, args, message,
                                                      tfmtl_cli):
  result = tfmtl_cli("train", "--config", str(config_file), *args, cwd=tmp_path)
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "runs").exists()  # nothing half-written


def test_evaluate_of_a_missing_run_names_it(tmp_path, tfmtl_cli):
  result = tfmtl_cli("evaluate", "--run", "runs/nothing", cwd=tmp_path)
  assert result.returncode == 2
  assert "runs/nothing: not a tfmtl run" in result.stderr


def test_tensorflow_log_lines_stay_out_of_the_output_unless_debug(tmp_path):
  """TensorFlow's native start-up lines and its Python warnings are not a
  command's output; with --debug its warnings print, once (its logger has
  its own handler). The command's own lines pass."""
  result = subprocess.run([sys.executable, "-c", """if True:
      import logging, sys
      from tfmtl import cli
      def data(args):
        import tensorflow as tf
        tf.get_logger().warning("a TensorFlow warning")
        logging.getLogger("tfmtl").info("the command's progress")
      cli.cmd_data = data
      sys.exit(cli.main(["data"]) or cli.main(["--debug", "data"]))"""],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("a TensorFlow warning") == 1  # the --debug run's
  assert result.stderr.count("INFO the command's progress") == 2
  assert "absl::InitializeLog" not in result.stderr and "I0000" not in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand_raises_for_the_traceback(tmp_path, where,
                                                                       tfmtl_cli):
  args = ["evaluate", "--run", "runs/nothing"]
  with pytest.raises(FileNotFoundError, match="runs/nothing: not a tfmtl run"):
    tfmtl_cli(*(["--debug", *args] if where == "before" else [*args, "--debug"]), cwd=tmp_path)


@pytest.mark.slow
def test_the_auxiliary_config_runs_on_movielens_and_exports_the_history_input(tmp_path,
                                                                              movielens,
                                                                              tfmtl_cli):
  import tensorflow as tf
  from pathlib import Path
  config = Path(__file__).resolve().parents[1] / "configs" / "movielens_100k_auxiliary.yaml"
  result = tfmtl_cli("run", "--config", str(config), "--set", "train.epochs=1", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stdout + result.stderr
  for name in ("occupation", "genre_profile", "rating", "retrieval"):
    assert f"{name}_loss" in log and f"{name}_weight" in log, name
  export = tmp_path / "saved_models" / "movielens_100k_auxiliary" / "1"
  retrieve = tf.saved_model.load(str(export)).signatures["serving_default"]
  assert set(retrieve.structured_input_signature[1]) == {
      "user_id", "age", "gender", "occupation", "zip_code", "history"}
  recommended = retrieve(user_id=tf.constant(["1"]), age=tf.constant([24.0]),
                         gender=tf.constant(["M"]), occupation=tf.constant(["technician"]),
                         zip_code=tf.constant(["85711"]), history=tf.constant(["50|172|133"]))
  assert recommended["item_ids"].shape == (1, 100)


def test_encode_items_writes_a_table_that_training_reads(tmp_path, tfmtl_cli):
  from tfmtl.content import ItemContentTable
  table = tmp_path / "minilm_titles"
  result = tfmtl_cli("encode-items", "--set", "content.encoder=minilm", "--set",
                  "content.text='{title} ({year})'", "--output", str(table), cwd=tmp_path)
  assert "1682 items, 384-d vectors" in result.stdout, result.stderr[-2000:]
  loaded = ItemContentTable.load(table)
  assert loaded.recipe == "{title} ({year})" and loaded.vectors.shape == (1682, 384)
  result = tfmtl_cli("data", "--set", f"content.table={table}", "--set", "content.encoder=minilm",
                  cwd=tmp_path)
  assert result.returncode == 0 and "100,000 interactions" in result.stdout, result.stderr[-2000:]
