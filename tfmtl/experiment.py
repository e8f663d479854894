"""The whole job, as `tfmtl run` does it: train -> evaluate -> export -> report.

`run(config)` prepares the data, trains, saves the run, evaluates it on the
test split beside the popularity and EASE baselines (`metrics.json`, with each
classification task's per-value report under `classification`), exports it for
TF Serving and writes its report; the CLI and the notebook call it.

Example (the main job on the real MovieLens 100K, one epoch; the test
suite runs it through README.md and the notebook):

>>> import tempfile
>>> import tfmtl
>>> folder = tempfile.mkdtemp()
>>> config = tfmtl.ExperimentConfig().with_overrides(
...     ["train.epochs=1", f"train.run_dir={folder}/run", f"export.base_path={folder}/models"])
>>> result = tfmtl.run(config, verbose=0)  # doctest: +SKIP
>>> result.metrics["recall@10"] > result.baseline["recall@10"]  # doctest: +SKIP
True
>>> result.export.parent.name, result.export.name  # doctest: +SKIP
('movielens_100k', '1')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Optional

from tfmtl import evaluation, runs, training
from tfmtl.config import ExperimentConfig
from tfmtl.data.splits import held_out_candidates
from tfmtl.model import MultiTaskModel
from tfmtl.serving.export import export_configured
from tfmtl.serving.text import ServingText

logger = logging.getLogger("tfmtl")


class RunResult(NamedTuple):
  """What `run` made: the trained model, its saved run, its test metrics and
  the popularity baseline's, the export's version folder and the report."""
  model: MultiTaskModel
  run_dir: Path
  metrics: dict[str, float]
  baseline: dict[str, float]
  export: Path
  report: Path
  classification: dict[str, dict] = {}  # `evaluation.classification_reports`
  ease: dict[str, float] = {}  # the EASE baseline's metrics (none where skipped)


def run(config: ExperimentConfig, base_path: Optional[str | Path] = None,
        verbose: int = 2) -> RunResult:
  """Trains, evaluates, exports (to `base_path`, default `export.base_path`)
  and reports one experiment (see module doc); `verbose` is Keras `fit`'s."""
  prepared = training.prepare(config)
  training.check_split(config, prepared.split, ("test",))  # fails now, not after training
  model, run_dir = train(config, prepared, verbose)
  metrics = evaluate(config, prepared, model)
  runs.save_metrics(run_dir, metrics)
  export = export_configured(model, config, base_path, text=ServingText.for_config(
      config, prepared.content and prepared.content.fine_tuned_layers))
  logger.info("Exported %s", export)
  from tfmtl.reports import run_report  # matplotlib: not at `import tfmtl`
  return RunResult(model, run_dir, metrics["model"], metrics["popularity"], export,
                   run_report(run_dir), metrics.get("classification", {}), metrics["ease"])


def train(config: ExperimentConfig, prepared: training.Prepared,
          verbose: int = 2) -> tuple[MultiTaskModel, Path]:
  """Fits the model and saves the run (in `runs.default_run_dir`; on a
  multi-worker cluster, the chief does): the model and the run's folder."""
  model = training.fit(config, prepared, verbose)
  return model, runs.save_run(runs.default_run_dir(config), config, prepared, model)


def evaluate(config: ExperimentConfig, prepared: training.Prepared,
             model: MultiTaskModel) -> dict[str, dict]:
  """The model's and the baselines' test metrics (`model`, `popularity`,
  `ease`; `ease_skipped` says why EASE has none), as `config.evaluate` and
  `config.split` say, and, for a model with classification tasks, their
  reports (`classification`: `evaluation.classification_reports`)."""
  logger.info("Evaluating on %d test interactions over %d items",
              len(prepared.split.test), len(prepared.data.items))
  settings = config.evaluate
  candidates = held_out_candidates(config.split, prepared.split.test)
  metrics = {"model": evaluation.evaluate_model(model, prepared.data, prepared.split,
                                                settings.ks, settings.batch_size, candidates),
             "popularity": evaluation.evaluate_popularity(prepared.data, prepared.split,
                                                          settings.ks, candidates,
                                                          settings.batch_size)}
  metrics["ease"], skipped = evaluation.evaluate_ease(
      prepared.data, prepared.split, settings.ks, candidates, settings.batch_size,
      settings.ease_lambda, settings.ease_max_items)
  if skipped:
    metrics["ease_skipped"] = skipped
    logger.info("The EASE baseline is skipped: %s", skipped)
  reports = evaluation.classification_reports(model, prepared.data, prepared.split.test,
                                              settings.batch_size)
  if reports:
    metrics["classification"] = reports
  return metrics
