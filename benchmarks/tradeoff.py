"""Retrieval against rating quality as the rating task's weight changes.

The default joint model (retrieval weight 1, like task unchanged) trained on
protocol B (see protocols.py) with the rating task's weight w in `--weights`:
one point per w, Recall@10 against RMSE on the test split, means over the
seeds with their std as error bars. The single-task rows of ablation.json
(ablation.py), when there and run with the same `--set`, are drawn as lines:
`retrieval_only` has a Recall@10 but no RMSE, `rating_only` the reverse.

    python benchmarks/tradeoff.py [--seeds 0] [--weights 0.01 0.1 0.3 1 3 10]
        [--set KEY=VALUE ...] [--results-dir DIR]

Writes <results-dir>/tradeoff.json (common.write_record; its `results` are
{"rows": [{"weight", "metrics"}]}) and tradeoff.png (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ablation import ROWS
from common import results_dir, write_record
from protocols import run_protocol


def single_task_metric(directory: Path, name: str, metric: str, extra: list[str]):
  """`metric` of ablation.json's protocol B row `name`, when run with `extra`."""
  path = directory / "ablation.json"
  rows = json.loads(path.read_text())["results"]["rows"] if path.exists() else []
  for row in rows:
    if row["config"] == name and row["protocol"] == "B":
      if row["overrides"] == [*ROWS[name], *extra]:
        return row["metrics"][metric]
      print(f"{path}: {name} was run with overrides {row['overrides']}, not "
            f"{[*ROWS[name], *extra]}; left out of the plot")
  return None


def plot(rows: list[dict], seeds: list[int], extra: list[str], directory: Path) -> Path:
  recall = [row["metrics"]["recall@10"] for row in rows]
  rmse = [row["metrics"]["rmse"] for row in rows]
  figure = Figure(figsize=(6.5, 4.5))
  FigureCanvasAgg(figure)  # no pyplot: Agg, no display
  axes = figure.subplots()
  axes.errorbar([m["mean"] for m in rmse], [m["mean"] for m in recall],
                xerr=[m["std"] for m in rmse], yerr=[m["std"] for m in recall],
                marker="o", capsize=3, label="joint model, rating weight w")
  for row, x, y in zip(rows, rmse, recall):
    axes.annotate(f"w={row['weight']:g}", (x["mean"], y["mean"]),
                  textcoords="offset points", xytext=(5, 5), fontsize=8)
  retrieval = single_task_metric(directory, "retrieval_only", "recall@10", extra)
  if retrieval is not None:
    axes.axhline(retrieval["mean"], color="tab:green", linestyle="--",
                 label=f"retrieval only (Recall@10 {retrieval['mean']:.3f})")
  rating = single_task_metric(directory, "rating_only", "rmse", extra)
  if rating is not None:
    axes.axvline(rating["mean"], color="tab:red", linestyle=":",
                 label=f"rating only (RMSE {rating['mean']:.3f})")
  axes.set_xlabel("RMSE (test, lower is better)")
  axes.set_ylabel("Recall@10 (test, higher is better)")
  axes.set_title(f"MovieLens 100K, protocol B, seeds {', '.join(map(str, seeds))}"
                 + (f"\n{' '.join(extra)}" if extra else ""), fontsize=10)
  axes.margins(0.1)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  path = directory / "tradeoff.png"
  staging = path.with_name(path.name + ".tmp")
  figure.savefig(staging, format="png", dpi=150)
  os.replace(staging, path)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1, 3, 10])
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override applied to every run, e.g. train.epochs=1")
  parser.add_argument("--results-dir", type=Path, default=None,
                      help="default benchmarks/results (results/device with an accelerator)")
  args = parser.parse_args()
  args.results_dir = args.results_dir or results_dir()
  rows = []
  for weight in args.weights:
    print(f"== rating weight {weight:g}", flush=True)
    summary = run_protocol("B", args.seeds, [f"tasks.rating.weight={weight:g}", *args.set])
    rows.append({"weight": weight, "metrics": summary["metrics"]})
  path = write_record("tradeoff", {"weights": args.weights, "overrides": args.set},
                      {"rows": rows}, args.seeds, args.results_dir)
  print(f"-> {path}\n-> {plot(rows, args.seeds, args.set, args.results_dir)}")


if __name__ == "__main__":
  main()
