"""What every benchmark records beside its numbers, and the one writer of its record.

Each benchmark writes one JSON per machine kind through `write_record`:
`benchmarks/results/<name>.json` on the CPU reference machine,
`benchmarks/results/device/<name>.json` where a GPU or TPU is present
(`$TFMTL_BENCHMARK_RESULTS` names another folder, e.g. for a smoke run).
Every record has the same top level:

    benchmark  the name (the file's stem)
    command    the command line, runnable from the repository root
    commit     `git rev-parse HEAD` (40 hex digits)
    dirty      whether tracked files had uncommitted changes
    cpu        {"model", "flags"}: the vector-instruction flags that matter
               here (avx2, avx512f, avx512_bf16, amx_bf16, ...)
    device     the accelerator's name, or null on a CPU-only machine
    machine    one line: CPU, cores, threads, OS, Python, TensorFlow, GPUs
    date       ISO 8601, UTC
    seeds      the seeds the results are over (model seeds), or ran with
    settings   the benchmark's own settings
    results    the benchmark's own results

History is in git, not in file names: a rerun replaces the file.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEVICE_RESULTS = RESULTS / "device"
RESULTS_ENV = "TFMTL_BENCHMARK_RESULTS"

# The /proc/cpuinfo flags the speed ratios depend on (x86, then Arm's "Features").
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm")


def _cpuinfo() -> Optional[dict[str, str]]:
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return None
  return {key.strip(): value.strip()
          for key, value in (line.split(":", 1) for line in lines if ":" in line)}


def cpu_info() -> dict[str, Any]:
  """{"model": the CPU's model, "flags": its VECTOR_FLAGS} (Linux's /proc/cpuinfo)."""
  fields = _cpuinfo()
  if fields is None:
    return {"model": platform.processor() or "CPU unknown", "flags": []}
  present = set(fields.get("flags", fields.get("Features", "")).split())
  return {"model": fields.get("model name", platform.processor() or "CPU unknown"),
          "flags": [flag for flag in VECTOR_FLAGS if flag in present]}


def cpu() -> str:
  """The CPU's model and widest vector instructions, on which the speed ratios depend."""
  info, fields = cpu_info(), _cpuinfo() or {}
  flags = set(info["flags"])
  if not fields.get("flags"):  # not x86 (Arm lists "Features"), or nothing known
    return info["model"]
  if "avx512f" in flags:
    return f"{info['model']}, AVX-512" + (" with bfloat16" if "avx512_bf16" in flags else "")
  return f"{info['model']}, " + ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")


def device() -> Optional[str]:
  """The accelerator's name (`2 x NAME` for several), or None on a CPU-only machine."""
  names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
           for gpu in tf.config.list_physical_devices("GPU")]
  names += ["TPU" for _ in tf.config.list_physical_devices("TPU")]
  if not names:
    return None
  return ", ".join(name if count == 1 else f"{count} x {name}"
                   for name, count in collections.Counter(names).items())


def machine() -> str:
  threads = tf.config.threading.get_intra_op_parallelism_threads() or "all"
  return (f"{platform.machine()} {cpu()}, {os.cpu_count()} cores ({threads} TF threads), "
          f"{platform.system()}, Python {platform.python_version()}, "
          f"TensorFlow {tf.__version__}, {device() or 'no GPU'}")


def results_dir() -> Path:
  """Where records go: $TFMTL_BENCHMARK_RESULTS, else results/device/ where a GPU
  or TPU is present, else results/ (the CPU reference machine)."""
  if os.environ.get(RESULTS_ENV):
    return Path(os.environ[RESULTS_ENV])
  return DEVICE_RESULTS if device() else RESULTS


def git_state() -> tuple[Optional[str], Optional[bool]]:
  """(HEAD's commit, whether tracked files differ from it); None where git fails."""
  def git(*args: str) -> Optional[str]:
    try:
      done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                            check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
      return None
    return done.stdout if done.returncode == 0 else None
  commit = git("rev-parse", "HEAD")
  status = git("status", "--porcelain", "--untracked-files=no")
  return (commit.strip() if commit else None), (None if status is None else bool(status.strip()))


STARTED_FROM = git_state()  # a benchmark runs for hours: commits made meanwhile are not its


def command_line(argv: Optional[list[str]] = None) -> str:
  """This process's command, runnable from the repository root."""
  argv = sys.argv if argv is None else argv
  script, args = Path(argv[0]).resolve(), argv[1:]
  cwd = Path.cwd().resolve()
  if cwd != ROOT and cwd.is_relative_to(ROOT):  # relative arguments stay right
    return shlex.join(["cd", str(cwd.relative_to(ROOT))]) + " && " + shlex.join(
        ["python", os.path.relpath(script, cwd), *args])
  shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
  return shlex.join(["python", str(shown), *args])


def write_json(path: Path, value: Any) -> Path:
  """Writes `value` to `path` atomically (a temporary file, then os.replace)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    staging.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(staging, path)
  finally:
    staging.unlink(missing_ok=True)
  return path


def record(name: str, settings: dict, results: dict, seeds: Optional[list]) -> dict:
  """The benchmark's record: provenance (the commit this process started
  from), then `settings` and `results`."""
  commit, dirty = STARTED_FROM
  return {"benchmark": name, "command": command_line(), "commit": commit, "dirty": dirty,
          "cpu": cpu_info(), "device": device(), "machine": machine(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "seeds": None if seeds is None else list(seeds),
          "settings": settings, "results": results}


def write_record(name: str, settings: dict, results: dict, seeds: Optional[list],
                 directory: Optional[Path] = None) -> Path:
  """Writes <directory>/<name>.json (default `results_dir()`) atomically."""
  return write_json((directory or results_dir()) / f"{name}.json",
                    record(name, settings, results, seeds))


def summary(values: list[float]) -> dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summaries(results: list[dict[str, float]], skip=()) -> dict[str, dict[str, float]]:
  """Each key every one of `results` has (but `skip`), summarised over them."""
  return {key: summary([result[key] for result in results]) for key in results[0]
          if key not in skip and all(key in result for result in results)}


def format_summaries(metrics: dict[str, dict[str, float]]) -> str:
  """`name mean ± std, ...` for a row's summarised metrics."""
  return ", ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in metrics.items())
