"""What every benchmark records beside its numbers: command, machine, date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

RESULTS = Path(__file__).resolve().parent / "results"


def cpu() -> str:
  """The CPU's model and widest vector instructions (Linux's /proc/cpuinfo),
  on which the speed ratios depend."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor() or "CPU unknown"
  fields = {key.strip(): value.strip()
            for key, value in (line.split(":", 1) for line in lines if ":" in line)}
  flags = set(fields.get("flags", "").split())
  model = fields.get("model name", "CPU unknown")
  if not flags:  # not x86 (ARM lists "Features")
    return model
  if "avx512f" in flags:
    return f"{model}, AVX-512" + (" with bfloat16" if "avx512_bf16" in flags else "")
  return f"{model}, " + ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")


def machine() -> str:
  threads = tf.config.threading.get_intra_op_parallelism_threads() or "all"
  gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
          for gpu in tf.config.list_physical_devices("GPU")]
  return (f"{platform.machine()} {cpu()}, {os.cpu_count()} cores ({threads} TF threads), "
          f"{platform.system()}, Python {platform.python_version()}, "
          f"TensorFlow {tf.__version__}, {', '.join(gpus) or 'no GPU'}")


class EpochTimer(keras.callbacks.Callback):
  """Each epoch's seconds (`times`), from its first batch to the end of
  every callback listed before this one (a checkpoint, say)."""

  def on_train_begin(self, logs=None):
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self.start)


def summary(values: list[float]) -> dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def format_summaries(metrics: dict[str, dict[str, float]]) -> str:
  """`name mean ± std, ...` for a row's summarised metrics."""
  return ", ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in metrics.items())


def write_result(name: str, result: dict, directory: Path = RESULTS) -> Path:
  """Writes <directory>/<name>.json (default benchmarks/results) atomically, with
  provenance."""
  record = {"command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "machine": machine(),
            "date": datetime.date.today().isoformat(), **result}
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{name}.json"
  staging = path.with_suffix(".json.tmp")
  staging.write_text(json.dumps(record, indent=2) + "\n")
  staging.rename(path)
  return path
