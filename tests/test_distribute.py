"""Training under tf.distribute strategies, on real devices and processes.

Each distributed run trains the tiny set on the same global batches as a
one-device run, from the same initial weights, and must end with the same
weights (tolerance: 1e-3, float sums in another order) and, in one process, the
same task losses. The one-device runs the cluster tests compare with are
trained once for the module, in this process (`one_device`).
"""

import contextlib
import functools
import io
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmtl import runs, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.distribute import (is_chief, make_strategy, serve_cluster_task,
                              steps_per_execution)

TOLERANCE = 1e-3

# Two logical CPU devices must be set before TensorFlow starts: a fresh process.
# argv: config file, then JSON lists of overrides, one per run; prints each
# run's last-epoch task losses, its weights and how many calls into
# TensorFlow it trained in (callbacks see one batch end per call).
_MIRRORED = r"""
import json, sys
import tfmtl
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras as keras
from tfmtl import training
from tfmtl.config import ExperimentConfig
base = ExperimentConfig.from_file(sys.argv[1])
prepared = training.prepare(base)
runs = []
for overrides in sys.argv[2:]:
  config = base.with_overrides(json.loads(overrides))
  calls = []
  count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: calls.append(1))
  model = training.fit(config, prepared, verbose=0, callbacks=[count])
  losses = {k: v[-1] for k, v in model.history.history.items() if k.endswith("_loss")}
  runs.append({"losses": losses, "calls": len(calls),
               "weights": [w.numpy().tolist() for w in model.trainable_weights]})
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, write_tiny_config):
  """The tiny set, all of it the training split (the module's tests share it)."""
  return write_tiny_config(tmp_path_factory.mktemp("tiny"), split={"fractions": [1.0, 0.0, 0.0]})


def _python(code_or_args, cwd, env=None, timeout=600):
  result = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _same(a: dict, b: dict) -> None:
  assert a["losses"].keys() == b["losses"].keys()
  for name in a["losses"]:
    assert a["losses"][name] == pytest.approx(b["losses"][name], rel=TOLERANCE), name
  for left, right in zip(a["weights"], b["weights"]):
    np.testing.assert_allclose(left, right, atol=TOLERANCE)


@pytest.mark.slow
def test_mirrored_on_two_cpus_trains_as_one_device(config_file, tmp_path, one_device):
  mirrored = ["train.strategy=mirrored", "train.devices=[/cpu:0,/cpu:1]"]
  shared_tables = ["model.tpu_embedding=true"]
  trainings = json.loads(_python(["-c", _MIRRORED, str(config_file), json.dumps(mirrored),
                             json.dumps(mirrored + shared_tables),
                             json.dumps(mirrored + ["train.steps_per_execution=4",
                                                    "tasks.retrieval.cross_replica_negatives=false"])],
                            cwd=tmp_path).stdout.strip().splitlines()[-1])
  two_replicas, tables_two_replicas, four_steps_local_negatives = trainings
  _same(one_device(epochs=2, tables=True), tables_two_replicas)  # TFRS's TPUEmbedding, off-TPU
  one_device = one_device(epochs=2, tables=False)  # trained in this process
  _same(one_device, two_replicas)
  # 2 epochs of 720 rows in batches of 64: 12 steps each. Unset,
  # steps_per_execution is 32 on one device and 1 under two replicas.
  assert one_device["calls"] == 2 and two_replicas["calls"] == 2 * 12
  # The last run, four steps a call with each replica's own negatives:
  # several steps a call need full batches (a smaller last one broke
  # TensorFlow's collectives), so an epoch leaves its last rows out; the
  # ranking losses stay close to one device's (total_loss is the last
  # step's: its batch differs).
  assert four_steps_local_negatives["calls"] == 2 * 3  # 11 full batches: 4 + 4 + 3 steps
  for name in ("rating_loss", "like_loss"):
    assert four_steps_local_negatives["losses"][name] == pytest.approx(
        one_device["losses"][name], rel=0.05), name
  # TFRS's own task scores each query against its replica's half of the
  # batch only: fewer negatives, a lower retrieval loss.
  assert (four_steps_local_negatives["losses"]["retrieval_loss"]
          < one_device["losses"]["retrieval_loss"] - 0.1)


@pytest.fixture(scope="module")
def one_device(config_file):
  """`train(epochs, tables)`: `config_file` with `train.epochs` and
  `model.tpu_embedding` set, trained on one device in this process as
  `tfmtl train` trains it, once for the module. A dict: `stdout` (its
  progress lines), `losses` (each loss of the last epoch), `weights`,
  `calls` (calls into TensorFlow), `untrained` (each task's loss on the
  training data before training: the untrained model's evaluation) and
  `trained` (each task's loss over the last epoch)."""

  @functools.cache
  def train(epochs: int, tables: bool) -> dict:
    import tf_keras as keras
    from tfmtl.data import make_dataset
    from tfmtl.model import build_model
    config = ExperimentConfig.from_file(config_file).with_overrides(
        [f"train.epochs={epochs}", f"model.tpu_embedding={str(tables).lower()}",
         "train.log_dir=''"])
    prepared = training.prepare(config)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, prepared.vocabulary, prepared.data.items)
    untrained = model.evaluate(make_dataset(prepared.data, prepared.split.train, model.encoder,
                                            config.train.batch_size), return_dict=True, verbose=0)
    calls = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: calls.append(1))
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
      model = training.fit(config, prepared, verbose=2, callbacks=[count])
    history = model.history.history
    tasks = [name for name in history if name.endswith("_loss")
             and name not in ("loss", "total_loss", "regularization_loss")]
    return {"stdout": stdout.getvalue(), "calls": len(calls),
            "losses": {k: v[-1] for k, v in history.items() if k.endswith("_loss")},
            "weights": [w.numpy() for w in model.trainable_weights],
            "untrained": {task: untrained[task] for task in tasks},
            "trained": {task: history[task][-1] for task in tasks}}
  return train


def _free_ports(n: int) -> list[int]:
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _run_weights(run_dir) -> dict:
  _, model = runs.load_run(run_dir)
  return {"losses": {}, "weights": [w.numpy() for w in model.trainable_weights]}


# `tfmtl train --config <argv[1]>` once per further argument (a JSON list of
# overrides), as the `tfmtl` command runs it, in one process: the strategy
# is made once per process and reused. Each run's stdout and stderr end with
# a line of their own.
_TRAIN_RUNS = r"""
import json, sys
from tfmtl import cli
for overrides in sys.argv[2:]:
  code = cli.main(["train", "--config", sys.argv[1],
                   *[arg for o in json.loads(overrides) for arg in ("--set", o)]])
  print("-- end of run", flush=True)
  print("-- end of run", file=sys.stderr, flush=True)
  if code:
    sys.exit(code)
"""


def _start_runs(config_file, cwd, runs_overrides, env: dict) -> subprocess.Popen:
  """A process training `config_file` once per list of overrides
  (`_TRAIN_RUNS`), with `env` (its TF_CONFIG) added to the environment."""
  return subprocess.Popen(
      [sys.executable, "-c", _TRAIN_RUNS, str(config_file), *map(json.dumps, runs_overrides)],
      cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **env})


def _finished_runs(process: subprocess.Popen) -> tuple[list[str], list[str]]:
  """A `_start_runs` process's stdout and stderr, per run, once it succeeded."""
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  return stdout.split("-- end of run\n")[:-1], stderr.split("-- end of run\n")[:-1]


def _two_workers(config_file, cwd, *runs_overrides) -> list[list[str]]:
  """Trains `config_file` once per list of overrides in two
  MultiWorkerMirroredStrategy processes; each process's stdout, per run."""
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  runs_overrides = [["train.strategy=multi_worker", *overrides] for overrides in runs_overrides]
  workers = [_start_runs(config_file, cwd, runs_overrides, {"TF_CONFIG": json.dumps(
      {"cluster": cluster, "task": {"type": "worker", "index": index}})}) for index in range(2)]
  return [_finished_runs(worker)[0] for worker in workers]


@pytest.mark.slow
def test_two_worker_processes_train_as_one_device_and_split_tfrecord_input_by_file(
    config_file, tmp_path, last_epoch_losses, one_device):
  """Two runs in the same two processes: in-memory input (the global
  batches of one device), then TFRecord files (each worker reads its own)."""
  (chief_memory, chief_files), (other_memory, other_files) = _two_workers(
      config_file, tmp_path, ["train.run_dir=runs/memory"],
      ["train.run_dir=runs/files", "train.input=tfrecord", "train.input_shards=4"])
  assert chief_memory.strip().endswith("Saved the trained model to runs/memory")
  assert other_memory.strip().endswith("Trained; the chief saves the run to runs/memory")
  assert other_files.strip().endswith("Trained; the chief saves the run to runs/files")
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["files", "memory"]  # chief's
  reference = one_device(epochs=2, tables=False)
  _same({"losses": {}, "weights": reference["weights"]}, _run_weights(tmp_path / "runs" / "memory"))
  # Each worker reads 2 of the 4 files, in half batches: as many steps as one
  # device (reading every file would take twice as many), other batches.
  steps = [re.findall(r"^(\d+)/\d+ - ", out, re.M) for out in (chief_files, reference["stdout"])]
  assert steps[0] == steps[1] and len(steps[0]) == 2
  assert last_epoch_losses(chief_files) == pytest.approx(
      last_epoch_losses(reference["stdout"]), rel=0.1)
  weights = _run_weights(tmp_path / "runs" / "files")["weights"]
  assert all(np.isfinite(w).all() for w in weights)


def test_fewer_tfrecord_files_than_workers_is_a_config_error(config_file, tmp_path, tfmtl_cli,
                                                            monkeypatch):
  """Each worker reads its own files; one file for two used to end in
  TensorFlow's traceback on both. The check reads TF_CONFIG before any
  strategy exists (so it runs here, in one process, as each worker would)."""
  cluster = {"worker": ["localhost:1", "localhost:2"]}
  for index in range(2):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": index}}))
    result = tfmtl_cli("train", "--config", config_file, "--set", "train.strategy=multi_worker",
                       "--set", "train.input=tfrecord", "--set", "train.input_shards=1",
                       cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("tfmtl train: error: train.input_shards: 1 file(s) for 2 workers that each read "
            "their own files; give at least 2") in result.stderr
  assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def parameter_server_cluster(tmp_path_factory):
  """(folder, tf_config): a cluster's working folder and `tf_config(kind,
  index)`, each of its tasks' TF_CONFIG. Its worker and two parameter
  servers (`tfmtl worker`) run in that folder while the module's tests do
  (they read and write the chief's relative paths there). One worker: two
  would also update the parameters asynchronously, which is TensorFlow's
  to test, and on two busy cores their updates once moved a loss less
  than the bound below."""
  folder = tmp_path_factory.mktemp("cluster")
  ports = iter(_free_ports(4))
  cluster = {"worker": [f"localhost:{next(ports)}"],
             "ps": [f"localhost:{next(ports)}" for _ in range(2)],
             "chief": [f"localhost:{next(ports)}"]}
  def tf_config(kind, index):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}
  servers = [subprocess.Popen([sys.executable, "-m", "tfmtl.cli", "worker"], cwd=folder,
                              env={**os.environ, **tf_config(kind, index)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for kind, index in (("worker", 0), ("ps", 0), ("ps", 1))]
  yield folder, tf_config
  for server in servers:
    server.kill()
    server.wait()


@pytest.mark.slow
def test_a_parameter_server_cluster_trains_with_sharded_embeddings(
    config_file, last_epoch_losses, one_device, parameter_server_cluster):
  """The towers' own embeddings, or `model.tpu_embedding`'s tables (TFRS's
  layer, off-TPU), split across the parameter servers. Two runs of one
  chief cover each input (`tfrecord`, `memory`) and each kind of table
  (sharded towers' embeddings, sharded shared tables) once."""
  folder, tf_config = parameter_server_cluster
  cases = [("tfrecord", "false"), ("memory", "true")]
  chief = _start_runs(config_file, folder, [
      ["train.strategy=parameter_server", "train.shard_min_bytes=1024", "train.epochs=4",
       f"train.run_dir=runs/ps_{train_input}_{tables}", f"train.input={train_input}",
       f"model.tpu_embedding={tables}"] for train_input, tables in cases], tf_config("chief", 0))
  stdouts, stderrs = _finished_runs(chief)
  for (train_input, tables), stdout, stderr in zip(cases, stdouts, stderrs, strict=True):
    sharded = stderr.split("split across the parameter servers: ")[1].splitlines()[0]
    assert "user_id_embedding" in sharded and "item_id_embedding" in sharded
    assert ("embedding_tables/user_id_embedding" in sharded) == (tables == "true")
    # The worker runs the steps the chief schedules, on variables that live
    # on the parameter servers: close to one device, not equal (another
    # order of input). Each task's loss must fall from the untrained
    # model's by at least half of what one device's falls; a cluster whose
    # updates are lost does not.
    reference = one_device(epochs=4, tables=tables == "true")
    untrained, trained = reference["untrained"], reference["trained"]
    for task, loss in last_epoch_losses(stdout).items():
      assert untrained[task] - loss >= 0.5 * (untrained[task] - trained[task]), (
          train_input, task, untrained[task], loss, trained[task])
    runs.load_run(folder / f"runs/ps_{train_input}_{tables}")  # the sharded tables reload whole


def test_tpu_falls_back_to_the_default_strategy_off_tpu(caplog):
  strategy = make_strategy("tpu")
  assert strategy.num_replicas_in_sync == 1
  assert "no TPU was found" in caplog.text


def test_auto_on_a_cpu_machine_is_the_default_strategy():
  assert make_strategy("auto") is tf.distribute.get_strategy()


@pytest.mark.parametrize("overrides, steps", [
    ([], 32), (["train.input=tfrecord"], 1),
    (["train.input=tfrecord", "train.data_service=grpc://localhost:5050"], 1)])
def test_steps_per_execution_unset_is_1_with_tfrecord_input(overrides, steps):
  """Streamed input has no size Keras could count several steps a call in."""
  train = ExperimentConfig().with_overrides(overrides).train
  assert steps_per_execution(make_strategy("default"), train) == steps


def test_multi_worker_without_tf_config_is_a_config_error(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ConfigError, match="TF_CONFIG"):
    make_strategy("multi_worker")


def test_train_under_parameter_servers_runs_on_the_chief_only(monkeypatch):
  """A worker's TF_CONFIG given to `tfmtl train` used to wait forever."""
  monkeypatch.setenv("TF_CONFIG", json.dumps({
      "cluster": {"chief": ["localhost:1"], "worker": ["localhost:2"], "ps": ["localhost:3"]},
      "task": {"type": "worker", "index": 0}}))
  with pytest.raises(ConfigError, match=r"task type 'worker': under parameter_server `tfmtl "
                                        r"train` runs on the chief; .* run `tfmtl worker`"):
    make_strategy("parameter_server")


def test_a_cluster_worker_without_tf_config_is_a_config_error(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ConfigError, match=r"^`tfmtl worker` needs the TF_CONFIG"):
    serve_cluster_task()


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_only_the_chief_writes_the_run(monkeypatch, tf_config, chief):
  if tf_config is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
  assert is_chief() is chief
