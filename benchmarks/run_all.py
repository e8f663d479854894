"""Runs a set of benchmarks, each in its own process with a timeout, and sums up.

    python benchmarks/run_all.py                     # lists both sets; runs nothing
    python benchmarks/run_all.py --device            # the accelerator set, < 8 min on one H100
    python benchmarks/run_all.py --cpu               # the CPU reference set, full size (hours)
    python benchmarks/run_all.py --device --dry-run  # prints the commands only
        [--only NAME ...] [--budget SECONDS] [--results-dir DIR]

`--device` runs what a GPU or TPU changes: training speed against the TFRS
recipe, the same with mixed bfloat16, serving latency and scaling, sized
down (fewer processes, rounds and sizes than the CPU records) so that the
whole set ends within `--budget` (default 460 s, counted from the start).
It refuses to start without an accelerator, since its smaller runs would
replace the CPU records. Each benchmark writes its record as on the CPU
machine (common.write_record), into benchmarks/results/device/ because a
device is present. It sets TF_FORCE_GPU_ALLOW_GROWTH=true: serving_latency's
measuring process shares the GPU with the process that trained the model.

`--cpu` runs every benchmark whose record is in benchmarks/results/, with
the command that record names (ablation with `--keep-protocols`), one
after another.

A benchmark that fails or runs past its timeout does not stop the others;
the summary lists each one's outcome, and the exit status is 1 if any
failed. `--results-dir` sends every record to DIR (for a smoke run that
must not replace the records).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS_ENV = "TFMTL_BENCHMARK_RESULTS"  # common.RESULTS_ENV (common imports TensorFlow)
DEVICE_BUDGET = 460  # seconds from the start: the device set ends within 8 minutes


@dataclasses.dataclass(frozen=True)
class Job:
  name: str           # the record it writes, results/[device/]<name>.json (but `protocols`)
  args: tuple         # after `python`, from the repository root
  timeout: int        # seconds
  requires: Optional[str] = None  # a module that must import (else skipped)
  note: str = ""

  def command(self) -> list[str]:
    return ["python", *self.args]


# Sizes for one H100 (no device run yet; estimates, conservative). Basis: on
# the 2-core CPU, speed_train with 1 process and 1 round of 1 epoch took 51 s,
# about 35 s of it TensorFlow's start-up, the data and tracing, which a GPU
# does not shorten (it adds CUDA's start-up and XLA's GPU compiles); the epochs
# themselves are a small share on a GPU. So: speed_train about 2 x 80 s + 15 s,
# the mixed-precision run about 90 s, serving latency (two models built and
# exported, each measured in a fresh process) about 100 s, scaling at 1M
# (CPU record: 4.5 s fit, 3.0 s evaluation, plus writing the data and
# start-up) about 55 s: some 7 minutes with the probe for the device. The
# budget stops the set at 460 s whatever happens.
DEVICE = [
    Job("speed_train", ("benchmarks/speed_train.py", "--processes", "2", "--rounds", "3"), 220,
        note="2 processes x 3 rounds (CPU record: 3 x 5)"),
    Job("speed_train_mixed_bfloat16",
        ("benchmarks/speed_train.py", "--processes", "1", "--rounds", "3",
         "--set", "train.precision=mixed_bfloat16", "--output", "speed_train_mixed_bfloat16"),
        130, note="1 process x 3 rounds"),
    Job("serving_latency", ("benchmarks/serving_latency.py",), 180,
        note="full size: MovieLens and 1M items"),
    Job("scaling", ("benchmarks/scaling.py", "--sizes", "1000000"), 120,
        note="1M interactions only (CPU record: 1M, 5M, 20M)"),
]

_MINUTE, _HOUR = 60, 3600
# the partitioned index's records: one file, a catalogue's rows replaced by each run
_PARTITIONED = ("benchmarks/serving_latency.py", "--index", "partitioned", "--catalogues")
CPU = [
    Job("protocol_a", ("benchmarks/protocols.py", "--protocols", "A"), 30 * _MINUTE),
    Job("protocol_b", ("benchmarks/protocols.py", "--protocols", "B", "--config",
                       "configs/movielens_100k_ease_kd.yaml"), 30 * _MINUTE,
        note="the best on validation: the default model distilled from EASE"),
    Job("ease_kd_a", ("benchmarks/protocols.py", "--protocols", "A", "--config",
                      "configs/movielens_100k_ease_kd.yaml", "--output", "ease_kd"), 30 * _MINUTE),
    Job("distillation", ("benchmarks/distillation.py",), _HOUR),
    Job("tuned_b", ("benchmarks/protocols.py", "--protocols", "B", "--config",
                    "configs/movielens_100k_tuned.yaml", "--output", "tuned"), 30 * _MINUTE),
    Job("tpu_embedding_b", ("benchmarks/protocols.py", "--protocols", "B", "--set",
                            "model.tpu_embedding=true", "--output", "tpu_embedding"), 30 * _MINUTE),
    Job("temporal_default_t", ("benchmarks/protocols.py", "--protocols", "T", "--output",
                               "temporal_default"), _HOUR),
    Job("temporal_gru_t", ("benchmarks/protocols.py", "--protocols", "T", "--output",
                           "temporal_gru", "--set", "model.sequence.type=gru"), _HOUR),
    Job("temporal_attention_t", ("benchmarks/protocols.py", "--protocols", "T", "--output",
                                 "temporal_attention", "--set", "model.sequence.type=attention"),
        _HOUR),
    Job("ablation", ("benchmarks/ablation.py", "--keep-protocols"), 3 * _HOUR,
        note="--keep-protocols: protocol_a/b stay protocols.py's; rewrites BENCHMARKS.md's table"),
    Job("tradeoff", ("benchmarks/tradeoff.py", "--seeds", "0"), _HOUR,
        note="after ablation: draws its single-task rows"),
    Job("tuning", ("benchmarks/tuning.py",), 2 * _HOUR),
    Job("protocol_c", ("benchmarks/protocol_c.py",), 2 * _HOUR),
    Job("language_model", ("benchmarks/language_model.py",), 2 * _HOUR),
    Job("protocol_d", ("benchmarks/protocol_d.py",), 3 * _HOUR),
    Job("protocol_d_validation", ("benchmarks/protocol_d.py", "--on", "validation", "--seeds", "0",
                                  "--fractions", "0.1", "--methods", "scratch", "joint",
                                  "--source-weights", "1", "0.5", "0.25", "0.1"), _HOUR),
    Job("protocol_e", ("benchmarks/protocol_e.py",), 2 * _HOUR),
    Job("propagation", ("benchmarks/propagation.py",), _HOUR),
    Job("speed_train", ("benchmarks/speed_train.py",), 30 * _MINUTE),
    Job("speed_train_mixed_bfloat16", ("benchmarks/speed_train.py", "--set",
                                       "train.precision=mixed_bfloat16", "--output",
                                       "speed_train_mixed_bfloat16"), 30 * _MINUTE),
    Job("speed_train_tpu_embedding", ("benchmarks/speed_train.py", "--set",
                                      "model.tpu_embedding=true", "--output",
                                      "speed_train_tpu_embedding"), 30 * _MINUTE),
    Job("retrieval_loss", ("benchmarks/retrieval_loss.py",), 10 * _MINUTE),
    Job("scaling", ("benchmarks/scaling.py",), _HOUR),
    Job("scaling_adam", ("benchmarks/scaling.py", "--optimizer", "adam"), 2 * _HOUR),
    Job("scaling_tfrecord", ("benchmarks/scaling.py", "--input", "tfrecord", "--sizes",
                             "1000000", "5000000"), 30 * _MINUTE),
    Job("serving_latency", ("benchmarks/serving_latency.py",), 30 * _MINUTE),
    Job("serving_latency_scann", ("benchmarks/serving_latency.py", "--index", "scann"),
        30 * _MINUTE, requires="scann", note="in the scann extra's own environment"),
    Job("serving_latency_scann",
        ("benchmarks/serving_latency.py", "--index", "scann", "--catalogues", "synthetic_10000000",
         "--scann", "num_leaves_to_search=3162", "num_reordering_candidates=10000"),
        _HOUR, requires="scann", note="10M items, in the scann extra's own environment"),
    Job("serving_latency_partitioned",
        (*_PARTITIONED, "movielens_1682", "synthetic_1000000", "random_1000000",
         "--quantization", "none", "bfloat16", "--nprobe", "0", "20", "40"), _HOUR),
    Job("serving_latency_partitioned",
        (*_PARTITIONED, "synthetic_10000000", "--quantization", "none", "--nprobe", "0", "64"),
        _HOUR, note="10M items, trained: 14 GB"),
    Job("serving_latency_partitioned",
        (*_PARTITIONED, "random_10000000", "--quantization", "none"), _HOUR,
        note="10M items, untrained"),
]


def shown(job: Job) -> str:
  import shlex
  return shlex.join(job.command())


def list_sets() -> None:
  for title, jobs in (("--device (GPU or TPU)", DEVICE), ("--cpu (the reference records)", CPU)):
    print(f"{title}:")
    for job in jobs:
      note = f"  # {job.note}" if job.note else ""
      print(f"  {job.name:<28} timeout {job.timeout:>5} s  {shown(job)}{note}")
  print(f"\nThe device set ends within {DEVICE_BUDGET} s (--budget). Nothing was run: "
        "pass --device or --cpu (--dry-run to print the commands).")


def accelerator() -> Optional[str]:
  """The accelerator's name, asked of a fresh TensorFlow (None without one)."""
  probe = ("import sys; sys.path.insert(0, 'benchmarks'); import common; "
           "print(common.device() or '')")
  done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  if done.returncode != 0:
    sys.exit(f"run_all: could not ask TensorFlow for a device:\n{done.stderr[-2000:]}")
  return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None


def run(job: Job, timeout: float, env: dict) -> tuple[str, float]:
  """Runs `job` in a process group of its own; its outcome and seconds."""
  start = time.monotonic()
  process = subprocess.Popen([sys.executable, *job.args], cwd=ROOT, env=env,
                             start_new_session=True)
  try:
    code = process.wait(timeout=timeout)
    outcome = "passed" if code == 0 else f"failed (exit {code})"
  except subprocess.TimeoutExpired:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
      try:
        os.killpg(process.pid, sig)
      except ProcessLookupError:
        break
      try:
        process.wait(timeout=grace)
        break
      except subprocess.TimeoutExpired:
        continue
    process.wait()
    outcome = f"failed (timed out after {timeout:.0f} s)"
  return outcome, time.monotonic() - start


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  chosen = parser.add_mutually_exclusive_group()
  chosen.add_argument("--device", action="store_true", help="the accelerator set")
  chosen.add_argument("--cpu", action="store_true", help="the CPU reference set (full size)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks of the set")
  parser.add_argument("--budget", type=float, default=None,
                      help=f"seconds for the whole set (default {DEVICE_BUDGET} with --device, "
                           "none with --cpu)")
  parser.add_argument("--results-dir", type=Path,
                      help="write every record here instead (a smoke run)")
  args = parser.parse_args()
  if not (args.device or args.cpu):
    list_sets()
    return 0
  jobs = DEVICE if args.device else CPU
  if args.only:
    unknown = sorted(set(args.only) - {job.name for job in jobs})
    if unknown:
      parser.error(f"not in this set: {', '.join(unknown)} "
                   f"(it has {', '.join(job.name for job in jobs)})")
    jobs = [job for job in jobs if job.name in args.only]
  budget = args.budget if args.budget is not None else (DEVICE_BUDGET if args.device else None)
  if args.dry_run:
    for job in jobs:
      print(shown(job))
    return 0

  started = time.monotonic()
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  if args.results_dir:
    env[RESULTS_ENV] = str(args.results_dir.resolve())
  if args.device:
    # serving_latency's measuring process shares the GPU with its parent
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    name = accelerator()
    if not name:
      sys.exit("run_all --device: no GPU or TPU is visible to TensorFlow; its smaller runs "
               "would replace the CPU records (use --cpu, or --dry-run)")
    print(f"device: {name}", flush=True)
  deadline = None if budget is None else started + budget
  outcomes = []
  for job in jobs:
    timeout = job.timeout
    if deadline is not None:
      timeout = min(timeout, deadline - time.monotonic())
    if job.requires and importlib.util.find_spec(job.requires) is None:
      outcomes.append((job, f"skipped (needs {job.requires})", 0.0))
    elif timeout < min(30, job.timeout):
      outcomes.append((job, "failed (not started: the budget is spent)", 0.0))
    else:
      print(f"== {job.name}: {shown(job)} (timeout {timeout:.0f} s)", flush=True)
      outcomes.append((job, *run(job, timeout, env)))
      print(f"== {job.name}: {outcomes[-1][1]} in {outcomes[-1][2]:.0f} s", flush=True)

  print("\nsummary:")
  for job, outcome, seconds in outcomes:
    print(f"  {job.name:<28} {outcome:<40} {seconds:6.0f} s")
  failed = [job.name for job, outcome, _ in outcomes if outcome.startswith("failed")]
  print(f"{len(outcomes) - len(failed)} of {len(outcomes)} did not fail"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
