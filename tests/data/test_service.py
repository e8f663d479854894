"""Training input prepared by a tf.data service in another process."""

import socket
import subprocess
import sys
import time

import pytest

from tfmtl import training
from tfmtl.config import ConfigError, ExperimentConfig


@pytest.fixture
def service(tmp_path):
  """`tfmtl data-service` on a free port: (address, its work dir)."""
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  work_dir = tmp_path / "dispatcher"
  process = subprocess.Popen(
      [sys.executable, "-m", "tfmtl.cli", "data-service", "--port", str(port),
       "--work-dir", str(work_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 120
    while True:
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      with socket.socket() as client:
        if client.connect_ex(("localhost", port)) == 0:
          break
      assert time.monotonic() < deadline, "the data service did not start"
      time.sleep(0.5)
    yield f"grpc://localhost:{port}", work_dir
  finally:
    process.kill()
    process.wait()


def _config(tmp_path, *overrides):
  return ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=8", "train.epochs=3", "train.batch_size=64",
      f"train.run_dir={tmp_path / 'run'}", *overrides])


def test_the_service_prepares_tfrecord_input_that_trains_as_in_process(
    service, tmp_path, tiny_prepared):
  address, work_dir = service
  served = training.fit(_config(tmp_path, "train.input=tfrecord",
                                f"train.data_service={address}"), tiny_prepared, verbose=0)
  local = training.fit(_config(tmp_path), tiny_prepared, verbose=0)
  for name in ("retrieval_loss", "rating_loss", "like_loss"):
    assert served.history.history[name][-1] == pytest.approx(
        local.history.history[name][-1], rel=0.1), name
  # The dispatcher was sent the pipeline: it reads the run's TFRecord shards.
  pipelines = [path.read_bytes() for path in (work_dir / "datasets").iterdir()]
  assert any(b"TFRecordDataset" in graph and str(tmp_path / "run.input").encode() in graph
             for graph in pipelines)
  assert not (tmp_path / "run.input").exists()  # removed once training completes


def test_the_service_needs_tfrecord_input():
  with pytest.raises(ConfigError, match="train.data_service: needs input: tfrecord"):
    ExperimentConfig().with_overrides(["train.data_service=grpc://localhost:5050"])


def test_a_service_address_must_be_grpc():
  with pytest.raises(ConfigError, match="train.data_service: 'localhost:5050' is not"):
    ExperimentConfig().with_overrides(["train.input=tfrecord",
                                       "train.data_service=localhost:5050"])
