"""Reports in Markdown with PNG plots: of a trained run, and of a search.

`run_report(run_dir)` reads the run's `history.json` and `metrics.json`
(`tfmtl run` writes both) and writes `<run_dir>/report/`: `report.md`,
`learning_curves.png` (each task's training loss and the validation
metrics by epoch), `metrics_at_k.png` (the test metrics at each cut-off,
beside popularity), each classification task's report (precision, recall,
F1 and support per value) and `tradeoff.png` (validation Recall@k against
the rating task's RMSE, epoch by epoch).

`search_report(search)` writes `<tune.directory>/<name>/report/`: the best
trials, `trials.png` (the objective by trial, and the best so far),
`importance.png` (how much of the objective's variance each hyperparameter
explains on its own) and `tradeoff.png` (each trial's retrieval and
ranking metric). Reports are written to a temporary folder and renamed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfmtl import atomic
from tfmtl.evaluation import report_table

_NOT_TASK_LOSSES = ("loss", "total_loss", "regularization_loss", "distillation_loss")


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except ValueError as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from None


def run_report(run_dir: str | Path) -> Path:
  """Writes `<run_dir>/report/` (see the module doc); returns report.md's path."""
  run_dir = Path(run_dir)
  if not (run_dir / "history.json").is_file():
    raise FileNotFoundError(f"{run_dir}: no history.json; train the run with `tfmtl train`")
  history = _read_json(run_dir / "history.json")
  metrics_file = run_dir / "metrics.json"
  metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
  epochs = [epoch + 1 for epoch in history["epoch"]]
  losses = {name: values for name, values in history.items()
            if name.endswith("_loss") and name not in _NOT_TASK_LOSSES}
  validation = {name: values for name, values in history.items() if name.startswith("val_")}
  k = _first_k(validation)
  lines = [f"# {run_dir.name}", ""]

  def write(folder: Path) -> None:
    figure, (left, right) = _figure(2)
    for name, values in losses.items():
      left.plot(epochs, values, marker="o", label=name)
    left.set(title="training loss per task", xlabel="epoch")
    for name in (f"val_recall@{k}", f"val_ndcg@{k}", "val_rating_rmse", "val_like_auc"):
      if name in validation:
        right.plot(epochs, validation[name], marker="o", label=name)
    right.set(title="validation metrics", xlabel="epoch")
    _save(figure, folder / "learning_curves.png", left, right)
    lines.extend(["## Learning curves", "", "![learning curves](learning_curves.png)", "",
                  "| epoch | " + " | ".join(losses) + " |",
                  "|---|" + "---|" * len(losses)])
    lines.extend(f"| {epoch} | " + " | ".join(f"{values[i]:.4f}" for values in losses.values())
                 + " |" for i, epoch in enumerate(epochs))
    if metrics:
      _metrics_at_k(metrics, folder / "metrics_at_k.png")
      names = sorted(metrics["model"])
      lines.extend(["", "## Test metrics", "", "![metrics at k](metrics_at_k.png)", "",
                    "| metric | model | popularity | EASE |", "|---|---|---|---|"])
      lines.extend(f"| {name} | {metrics['model'][name]:.4f} | "
                   f"{_format(metrics.get('popularity', {}).get(name))} | "
                   f"{_format(metrics.get('ease', {}).get(name))} |" for name in names)
      if metrics.get("ease_skipped"):
        lines.extend(["", f"No EASE baseline: {metrics['ease_skipped']}."])
      for task, report in metrics.get("classification", {}).items():
        lines.extend(["", f"## Classification report: {task}", "", *report_table(report)])
    if f"val_recall@{k}" in validation and "val_rating_rmse" in validation:
      figure, (axes,) = _figure(1)
      axes.plot(validation["val_rating_rmse"], validation[f"val_recall@{k}"], "o-")
      for epoch, x, y in zip(epochs, validation["val_rating_rmse"],
                             validation[f"val_recall@{k}"]):
        axes.annotate(str(epoch), (x, y), fontsize=7)
      axes.set(xlabel="validation rating RMSE (lower is better)",
               ylabel=f"validation Recall@{k}", title="retrieval / ranking, by epoch")
      _save(figure, folder / "tradeoff.png", axes)
      lines.extend(["", "## Retrieval / ranking trade-off", "", "![trade-off](tradeoff.png)"])
    (folder / "report.md").write_text("\n".join(lines) + "\n")

  return _write_folder(run_dir / "report", write)


def search_report(search) -> Path:
  """Writes `<project>/report/` for a `tfmtl.tuning.Search`; returns report.md's path."""
  trials = [t for t in search.oracle.trials.values() if t.status == "COMPLETED"]
  if not trials:
    raise RuntimeError(f"{search.project_dir}: no trial has completed")
  objective = search.oracle.objective
  sign = 1 if objective.direction == "max" else -1
  ranked = sorted(trials, key=lambda t: -sign * t.score)
  names = list(search.config.tune.space)
  values = {name: [t.hyperparameters.values.get(name) for t in trials] for name in names}
  scores = np.array([t.score for t in trials])
  importance = {name: _explained(values[name], scores) for name in names}
  lines = [f"# Search: {search.config.name}", "",
           f"{len(trials)} completed trials, {search.config.tune.algorithm}; objective "
           f"{objective.name} ({objective.direction}).", "", "## Best trials", "",
           "| trial | " + objective.name + " | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  lines.extend(f"| {t.trial_id} | {t.score:.4f} | " + " | ".join(
      str(t.hyperparameters.values.get(name)) for name in names) + " |" for t in ranked[:10])

  def write(folder: Path) -> None:
    order = sorted(trials, key=lambda t: t.trial_id)
    figure, (axes,) = _figure(1)
    ordered = [t.score for t in order]
    best = np.maximum.accumulate(np.array(ordered) * sign) * sign
    axes.plot(range(len(order)), ordered, "o", label="trial")
    axes.plot(range(len(order)), best, "-", label="best so far")
    axes.set(xlabel="trial", ylabel=objective.name, title="objective by trial")
    _save(figure, folder / "trials.png", axes)
    figure, (axes,) = _figure(1)
    axes.barh(names, [importance[name] for name in names])
    axes.set(xlabel="share of the objective's variance explained", title="hyperparameters")
    _save(figure, folder / "importance.png", axes, legend=False)
    lines.extend(["", "![objective by trial](trials.png)", "", "## Hyperparameters", "",
                  "Each bar is the share of the objective's variance that the "
                  "hyperparameter explains on its own (between-group variance for "
                  "choices, a linear fit for ranges); with few trials it is rough.", "",
                  "![importance](importance.png)", ""])
    retrieval, ranking = _tradeoff_metrics(trials)
    if retrieval and ranking:
      figure, (axes,) = _figure(1)
      x = [t.metrics.get_last_value(ranking) for t in trials]
      y = [t.metrics.get_last_value(retrieval) for t in trials]
      axes.plot(x, y, "o", label="trial")
      axes.plot(x[trials.index(ranked[0])], y[trials.index(ranked[0])], "*", markersize=14,
                label="best")
      axes.set(xlabel=ranking, ylabel=retrieval, title="retrieval / ranking, by trial")
      _save(figure, folder / "tradeoff.png", axes)
      lines.extend(["## Retrieval / ranking trade-off", "", "![trade-off](tradeoff.png)", ""])
    (folder / "report.md").write_text("\n".join(lines) + "\n")

  return _write_folder(Path(search.project_dir) / "report", write)


def _explained(values: list, scores: np.ndarray) -> float:
  """The share of `scores`' variance that `values` explains on its own."""
  total = float(np.var(scores))
  if total == 0 or len(set(map(str, values))) < 2:
    return 0.0
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    x = np.array(values, dtype=float)
    return float(np.corrcoef(x, scores)[0, 1] ** 2) if np.var(x) > 0 else 0.0
  groups = {}
  for value, score in zip(map(str, values), scores):
    groups.setdefault(value, []).append(score)
  between = sum(len(g) * (np.mean(g) - scores.mean()) ** 2 for g in groups.values())
  return float(between / len(scores) / total)


def _tradeoff_metrics(trials) -> tuple[str, str]:
  names = set(trials[0].metrics.metrics)
  retrieval = min((n for n in names if n.startswith("recall@")),
                  key=lambda n: int(n.split("@")[1]), default="")
  ranking = next((n for n in sorted(names) if n.endswith("_rmse")), "")
  return retrieval, ranking


def _metrics_at_k(metrics: dict, path: Path) -> None:
  families = ("recall", "ndcg", "hit")
  figure, axes_row = _figure(len(families))
  for axes, family in zip(axes_row, families):
    for who, style in (("model", "o-"), ("popularity", "s--"), ("ease", "^:")):
      points = sorted((int(name.split("@")[1]), value)
                      for name, value in metrics.get(who, {}).items()
                      if name.startswith(f"{family}@"))
      if points:
        axes.plot(*zip(*points), style, label=who)
    axes.set(title=f"{family}@k", xlabel="k")
  _save(figure, path, *axes_row)


def _first_k(validation: dict) -> int:
  ks = [int(name.split("@")[1]) for name in validation if name.startswith("val_recall@")]
  return min(ks, default=10)


def _format(value) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _figure(columns: int):
  figure = Figure(figsize=(5 * columns, 3.6))
  FigureCanvasAgg(figure)
  return figure, figure.subplots(1, columns, squeeze=False)[0]


def _save(figure: Figure, path: Path, *axes, legend: bool = True) -> None:
  for each in axes:
    each.grid(True, alpha=0.3)
    if legend and each.get_legend_handles_labels()[0]:
      each.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def _write_folder(folder: Path, write: Callable[[Path], None]) -> Path:
  """Writes a report folder whole (`tfmtl.atomic.write_folder`), replacing
  an earlier report."""
  atomic.write_folder(folder, write,
                      replaceable=lambda old: (old / "report.md").is_file())
  return folder / "report.md"
