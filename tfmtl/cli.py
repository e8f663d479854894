"""The `tfmtl` command: thin subcommands over the Python API.

    tfmtl data     [--config FILE] [--set KEY=VALUE ...]   fetch and check the data
    tfmtl encode-items [--config FILE] [--set ...] [--output DIR]
                                                           item text -> content vectors
    tfmtl train    [--config FILE] [--set KEY=VALUE ...]   fit; write runs/<name>/
    tfmtl tune     [--config FILE] [--set ...] [--overwrite] KerasTuner search over tune.space;
                                                           writes tuning/<name>/best.yaml
    tfmtl evaluate --run DIR                               test-split metrics
    tfmtl report   --run DIR                               Markdown + plots: runs/<name>/report/
    tfmtl export   --run DIR [--base-path P] [--version N] SavedModel for TF Serving
    tfmtl validate --run DIR [--export DIR]               check an export as TF Serving will
    tfmtl run      [--config FILE] [--set ...] [--base-path P]  train, evaluate,
                                                           export and report
    tfmtl add-items --run DIR --items FILE [--base-path P]  export with new items
    tfmtl synthesize --output DIR --interactions N --users U --items I [--tastes T]
                     [--shards S] [--seed N]
                                                           synthetic data, Parquet shards
    tfmtl worker                                           a parameter-server cluster's
                                                           worker or ps task (TF_CONFIG)
    tfmtl data-service [--port P] [--workers N] [--dispatcher HOST:PORT] [--work-dir DIR]
                                                           tf.data service for training input

Without `--config` the defaults apply: MovieLens 100K, per-user 8:1:1 split,
retrieval + rating + like. `--set` overrides any config key, e.g.
`--set train.epochs=5 --set model.embedding_dim=64`. Errors print one
paragraph; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
import sys
import threading
from pathlib import Path

_EXPECTED_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError,
                    ImportError, OSError, RuntimeError)


def _config(args):
  from tfmtl.config import ExperimentConfig
  config = ExperimentConfig.from_file(*args.config)  # none: the defaults
  return config.with_overrides(args.set)


def _print_metrics(metrics: dict, baseline: dict, classification: dict, ease: dict,
                   ease_skipped: str = "") -> None:
  from tfmtl.evaluation import report_table
  print(f"{'metric':<22}{'model':>10}{'popularity':>12}{'ease' if ease else '':>12}")
  for name, value in metrics.items():
    others = "".join(f"{table[name]:>12.4f}" for table in (baseline, ease) if name in table)
    print(f"{name:<22}{value:>10.4f}{others}")
  if ease_skipped:
    print(f"(no EASE baseline: {ease_skipped})")
  for task, report in classification.items():
    print(f"\nClassification report of task {task!r}:", *report_table(report), sep="\n")


def _run_dir_line(run_dir: Path) -> str:
  from tfmtl.distribute import is_chief
  return (f"Saved the trained model to {run_dir}" if is_chief() else
          f"Trained; the chief saves the run to {run_dir}")


def cmd_data(args) -> None:
  from tfmtl import training
  prepared = training.prepare(_config(args))
  print(prepared.data.summary())


def cmd_encode_items(args) -> None:
  from tfmtl.config import ConfigError
  from tfmtl.content import encode_item_content
  from tfmtl.data.sources import load_data
  config = _config(args)
  if config.content.encoder == "none":
    raise ConfigError("content.encoder: is none; name an encoder, e.g. "
                      "--set content.encoder=minilm")
  if config.content.fine_tune.objective == "recommend":  # trains on the prepared data
    from tfmtl import training
    table = training.prepare(config).content
  else:
    table = encode_item_content(load_data(config.data).items, config.content,
                                config.data.cache_dir)
  if args.output:
    table.save(args.output)
  print(f"{len(table.item_ids)} items, {table.dim}-d vectors from {table.encoder}, "
        f"text {table.recipe!r}" + (f" -> {args.output} (train with "
                                     f"--set content.table={args.output})"
                                     if args.output else " (cached for training)"))


def cmd_train(args) -> None:
  from tfmtl import experiment, training
  config = _config(args)
  _, run_dir = experiment.train(config, training.prepare(config))
  print(_run_dir_line(run_dir))


def cmd_tune(args) -> None:
  from tfmtl import training
  from tfmtl.reports import search_report
  from tfmtl.tuning import Search, is_tuning_worker
  config = _config(args)
  search = Search(config, overwrite=args.overwrite)
  search.search(training.prepare(config))
  if is_tuning_worker():
    print("This worker's trials are done; the chief writes the best config.")
    return
  path = search.write_best_config()
  report = search_report(search)
  best = search.oracle.get_best_trials(1)
  print(f"Best trial {best[0].trial_id}: {search.oracle.objective.name} = {best[0].score:.4f} "
        f"({' '.join(search.best_overrides())})\n"
        f"Its trained model: {search.trial_run_dir(best[0].trial_id)} "
        f"(tfmtl export --run takes it)\n"
        f"Its config: {path}; retrain it with: tfmtl train --config {path}\n"
        f"Report: {report}")


def cmd_evaluate(args) -> None:
  from tfmtl import experiment, runs, training
  config, model = runs.load_run(args.run)
  prepared = training.prepare(config)
  training.check_split(config, prepared.split, ("test",))
  metrics = experiment.evaluate(config, prepared, model)
  runs.save_metrics(args.run, metrics)
  _print_metrics(metrics["model"], metrics["popularity"], metrics.get("classification", {}),
                 metrics["ease"], metrics.get("ease_skipped", ""))


def cmd_export(args) -> None:
  from tfmtl import runs
  from tfmtl.serving.export import export_configured
  from tfmtl.serving.text import ServingText
  config, model = runs.load_run(args.run)
  print(export_configured(model, config, args.base_path, args.version,
                          ServingText.for_run(args.run, config)))


def cmd_synthesize(args) -> None:
  from tfmtl.data.synthetic import data_config, write_synthetic
  folder = write_synthetic(args.output, args.interactions, args.users, args.items,
                           args.tastes, args.shards, seed=args.seed)
  data = data_config(folder)
  overrides = [f"data.{key}={value}" for key, value in data.items() if not isinstance(value, dict)]
  overrides += [f"data.{key}.{name}={kind}" for key in ("user_features", "item_features")
                for name, kind in data[key].items()]
  print(f"Wrote {args.interactions} interactions to {folder}; train on them with\n"
        + " ".join(f"--set {shlex.quote(override)}" for override in overrides))


def cmd_worker(args) -> None:
  from tfmtl.distribute import serve_cluster_task
  serve_cluster_task()


def cmd_data_service(args) -> None:
  from tfmtl.data.service import serve
  serve(args.port, args.workers, args.dispatcher, args.work_dir)


def cmd_validate(args) -> None:
  from tfmtl import runs
  from tfmtl.serving.export import latest_export
  from tfmtl.serving.validate import validate_export
  export = args.export or latest_export(runs.read_run(args.run)[0])
  checks = validate_export(args.run, export)
  for check in checks:
    print(f"{'ok' if check.passed else 'FAILED':<8}{check.name}: {check.detail}")
  failed = [check.name for check in checks if not check.passed]
  if failed:
    raise ValueError(f"{export}: {len(failed)} of {len(checks)} checks failed: "
                     f"{'; '.join(failed)}")
  print(f"{export}: ready for TF Serving")


def cmd_add_items(args) -> None:
  from tfmtl.data import read_table
  from tfmtl.serving import add_items
  items = read_table(args.items, args.format)
  print(add_items(args.run, items, args.base_path, args.version, source=args.items))


def cmd_report(args) -> None:
  from tfmtl.reports import run_report
  print(run_report(args.run))


def cmd_run(args) -> None:
  from tfmtl import experiment
  result = experiment.run(_config(args), args.base_path)
  print(_run_dir_line(result.run_dir))
  _print_metrics(result.metrics, result.baseline, result.classification, result.ease)
  print(f"SavedModel: {result.export}")
  print(f"Report: {result.report}")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="tfmtl", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  commands = parser.add_subparsers(dest="command", required=True)

  def command(name, **kwargs):  # `--debug` also after the subcommand
    sub = commands.add_parser(name, **kwargs)
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks")
    return sub

  def with_config(sub):
    sub.add_argument("--config", action="append", default=[],
                     help="experiment YAML (default: built-in defaults); repeated, each file "
                          "is layered over the ones before (its keys win)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. train.epochs=5")
    return sub

  with_config(command("data", help="fetch, check and summarise the data")
              ).set_defaults(handler=cmd_data)
  encode = with_config(command(
      "encode-items", help="encode item text with the content encoder (cached)"))
  encode.add_argument("--output", help="also write the table to this folder")
  encode.set_defaults(handler=cmd_encode_items)
  with_config(command("train", help="train and save a run")
              ).set_defaults(handler=cmd_train)
  tune = with_config(command(
      "tune", help="search tune.space with KerasTuner; write the best config"))
  tune.add_argument("--overwrite", action="store_true",
                    help="start the search over rather than resume it")
  tune.set_defaults(handler=cmd_tune)
  evaluate = command("evaluate", help="evaluate a saved run")
  evaluate.add_argument("--run", required=True, help="run directory (runs/<name>)")
  evaluate.set_defaults(handler=cmd_evaluate)
  report = command(
      "report", help="write a run's report: Markdown and plots (learning curves, metrics at k)")
  report.add_argument("--run", required=True, help="run directory (runs/<name>)")
  report.set_defaults(handler=cmd_report)
  export = command("export", help="export a saved run for TF Serving")
  export.add_argument("--run", required=True, help="run directory (runs/<name>)")
  export.add_argument("--base-path", help="TF Serving base path (default from config)")
  export.add_argument("--version", type=int, help="version number (default: next)")
  export.set_defaults(handler=cmd_export)
  validate = command(
      "validate", help="check an export the way TF Serving will use it")
  validate.add_argument("--run", required=True, help="the run it was exported from")
  validate.add_argument("--export", help="version folder (default: the run's latest export)")
  validate.set_defaults(handler=cmd_validate)
  synthesize = command(
      "synthesize", help="write synthetic interactions (power-law skew, planted tastes) "
      "as Parquet shards")
  synthesize.add_argument("--output", required=True, help="a new folder")
  for flag, default, meaning in (
      ("interactions", None, "rows to write"), ("users", None, "distinct users"),
      ("items", None, "distinct items"), ("tastes", 20, "hidden tastes planted"),
      ("shards", 8, "Parquet files of interactions, of about equal size"),
      ("seed", 0, "random seed")):
    synthesize.add_argument(f"--{flag}", type=int if flag == "seed" else _positive,
                            default=default, required=default is None,
                            help=meaning + ("" if default is None else f" (default {default})"))
  synthesize.set_defaults(handler=cmd_synthesize)
  command(
      "worker", help="serve as TF_CONFIG's worker or ps task of a parameter-server "
      "cluster (train.strategy=parameter_server)").set_defaults(handler=cmd_worker)
  data_service = command(
      "data-service", help="run a tf.data service dispatcher and workers that prepare "
      "training input for configs with train.data_service=grpc://HOST:PORT")
  data_service.add_argument("--port", type=int, default=5050, help="the dispatcher's port")
  data_service.add_argument("--workers", type=_positive, default=1, help="worker servers")
  data_service.add_argument("--dispatcher", help="HOST:PORT of a dispatcher elsewhere: "
                            "start only workers for it")
  data_service.add_argument("--work-dir", help="the dispatcher's state, so that a restarted "
                            "dispatcher resumes its jobs")
  data_service.set_defaults(handler=cmd_data_service)
  new_items = command(
      "add-items", help="export a run with new items (their text encoded), no retraining")
  new_items.add_argument("--run", required=True, help="run directory (runs/<name>)")
  new_items.add_argument("--items", required=True,
                         help="item table: item_id, the item features, the text columns")
  new_items.add_argument("--format", default="auto", help="auto, csv, tsv, parquet, atomic")
  new_items.add_argument("--base-path", help="TF Serving base path (default from config)")
  new_items.add_argument("--version", type=int, help="version number (default: next)")
  new_items.set_defaults(handler=cmd_add_items)
  run = with_config(command(
      "run", help="train, evaluate, export and print the metrics"))
  run.add_argument("--base-path", help="TF Serving base path (default from config)")
  run.set_defaults(handler=cmd_run)
  return parser


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
  return value


LOG_FORMAT = "%(levelname)s %(message)s"  # how the command's log lines read on stderr


# TensorFlow's native start-up lines (absl's, written before it is initialised,
# which no environment variable silences), kept off stderr without --debug.
_NATIVE_LOG_LINE = re.compile(
    rb"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] |To enable the following instructions:)")


@contextlib.contextmanager
def _without_native_log_lines():
  """File descriptor 2, where TensorFlow's C++ writes, through a filter that
  drops `_NATIVE_LOG_LINE`s and passes everything else on to stderr."""
  sys.stderr.flush()
  stderr = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward():
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        if not _NATIVE_LOG_LINE.match(line):
          try:
            os.write(stderr, line)
          except OSError:  # closed at exit while a child process still wrote
            return
  thread = threading.Thread(target=forward, daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(stderr, 2)  # the pipe's last write end closes: `forward` ends
    thread.join(timeout=5)
    os.close(stderr)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(format=LOG_FORMAT)
  logging.getLogger("tfmtl").setLevel(logging.INFO)  # progress; TensorFlow stays quiet
  quiet = not args.debug and sys.stderr is sys.__stderr__  # a process of its own
  # TensorFlow's own Python warnings (e.g. retracing): only with --debug
  logging.getLogger("tensorflow").setLevel(logging.WARNING if args.debug else logging.ERROR)
  try:
    with _without_native_log_lines() if quiet else contextlib.nullcontext():
      import tfmtl  # noqa: F401  (binds Keras 2 before TensorFlow is used)
      logging.getLogger("tensorflow").propagate = False  # it has its own handler: print once
      args.handler(args)
  except Exception as error:  # noqa: BLE001  (one line for what users can act on)
    message = _user_message(error)
    if args.debug or message is None:
      raise
    print(f"tfmtl {args.command}: error: {message}", file=sys.stderr)
    return 2
  return 0


def _user_message(error: Exception):
  """The one line that `error` shows a user, or None for a bug (a traceback).

  TensorFlow's I/O errors (`tf.errors.OpError`: a read-only folder, a full
  disk, a corrupt file) name their file in their first line; the rest of
  their text, and the op they name, are TensorFlow's own context.
  """
  tf = sys.modules.get("tensorflow")  # not imported: `error` cannot be one of its
  if tf is not None and isinstance(error, tf.errors.OpError):
    message = (error.message or str(error)).strip().splitlines()[0]
  elif not isinstance(error, _EXPECTED_ERRORS):
    return None
  elif isinstance(error, OSError) and error.filename and error.strerror:
    message = f"{error.filename}: {error.strerror}"
  else:
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  return re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", message)


if __name__ == "__main__":
  sys.exit(main())
