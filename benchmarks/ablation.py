"""Multi-task ablation on MovieLens 100K: tasks, multi-task blocks, loss weighting.

Each row of `ROWS` is a list of `--set` overrides on tfmtl's default config
(retrieval, rating and like tasks over shared towers, `independent` heads),
trained and evaluated on protocols A and B (see protocols.py) once per model
seed. Metrics are on the test split, and protocol B rows also hold
`validation_recall@10`, `validation_ndcg@10` and `validation_rmse` on its
validation split, which the best model is chosen on; a metric a row's model
does not produce (RMSE of `retrieval_only`) is absent from its row. To add a row, add it to
`ROWS`; a row in `SEPARATE_DOMAINS` trains one model per domain of its
`data.domain_column` and combines their metrics (`protocols.per_domain_fit`).

    python benchmarks/ablation.py [--rows NAME ...] [--protocols A B]
        [--seeds 0 1 2] [--set KEY=VALUE ...] [--results-dir DIR]
        [--markdown FILE | --no-table] [--keep-protocols]
    python benchmarks/ablation.py --table-only [--results-dir DIR]

Writes <results-dir>/ablation.json (default benchmarks/results; the record
of common.write_record, whose `results` are {"rows": [{"config", "protocol",
"overrides", "metrics": {METRIC: {"mean", "std"}}}, ...]}). Rows not run
keep their entries from an earlier ablation.json, which must then have the
same seeds. Every config is
checked before training starts: a row that does not validate stops the run
(leave it out with --rows). Each finished (row, protocol) is saved at once
in ablation.partial.json: after an interruption, the same command reuses
them and goes on. The partial file is removed once ablation.json is written.

The table of ablation.json then goes into BENCHMARKS.md between the
`<!-- ablation:start -->` and `<!-- ablation:end -->` lines (the section is
appended when they are absent); `--table-only` only does that.

The run also rewrites protocol_a.json and protocol_b.json, as protocols.py
writes them, with the best joint row (retrieval and rating tasks, run on
both protocols): the one with the highest protocol B *validation* NDCG@10,
never chosen on the test metrics. `--keep-protocols` leaves them alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfmtl.config import ConfigError

from common import results_dir, write_json, write_record
from protocols import protocol_config, run_protocol, write_protocol

_DEFAULT_TASKS = ("retrieval: {type: retrieval, temperature: 0.1}, "
                  "rating: {type: regression, label: rating}, "
                  "like: {type: binary, label: rating, threshold: 4.0, weight: 0.5}")

ROWS = {
    "retrieval_only": ["tasks={retrieval: {type: retrieval, temperature: 0.1}}"],
    "rating_only": ["tasks={rating: {type: regression, label: rating}}"],
    "independent": [],
    "shared_bottom": ["model.multitask={type: shared_bottom, layers: [64]}"],
    "mmoe": ["model.multitask={type: mmoe, layers: [64], num_experts: 4}"],
    "ple": ["model.multitask={type: ple, layers: [64], num_task_experts: 2, "
            "num_shared_experts: 2, num_levels: 2}"],
    "dcn_cross": ["model.multitask.cross_layers=2"],
    "uncertainty": ["model.loss_weighting.type=uncertainty"],
    "dwa": ["model.loss_weighting.type=dwa"],
    "aux_user": ["tasks={" + _DEFAULT_TASKS
                 + ", occupation: {type: classification, label: occupation, weight: 0.1}"
                 + ", genre_profile: {type: reconstruction, label: genres, weight: 0.1}}"],
    "aux_item_genre": ["tasks={" + _DEFAULT_TASKS
                       + ", genre: {type: classification, label: genres, weight: 0.1}}"],
    "sequence": ["model.sequence.type=gru"],
    "sequence_attention": ["model.sequence.type=attention"],
    "sequence_lstm": ["model.sequence.type=lstm"],
    "task_coupling": ["model.multitask.coupling=0.01"],
    "item_autoencoder": ["tasks={" + _DEFAULT_TASKS
                         + ", genre_code: {type: autoencoder, label: genres, weight: 0.1}}"],
    "early_stopping": ["train.epochs=30",
                       "train.early_stopping={metric: ndcg@10, patience: 3}"],
    "cosine_schedule": ["train.learning_rate_schedule=cosine", "train.warmup_steps=78"],
    "l1": ["model.l1=1e-5"],
    # Users' gender as the domain: ranking heads (or MMoE gates) per domain
    # over shared towers, against one model per domain and the pooled rows
    # (`independent`, `mmoe`).
    "multi_domain": ["data.domain_column=gender"],
    "multi_domain_shared_heads": ["data.domain_column=gender",
                                  "model.multitask.per_domain=shared_heads"],
    "multi_domain_gates": ["model.multitask={type: mmoe, layers: [64], num_experts: 4, "
                           "per_domain: gates}", "data.domain_column=gender"],
    "per_domain_models": ["data.domain_column=gender"],
}
SEPARATE_DOMAINS = {"per_domain_models"}  # one model per domain (protocols.per_domain_fit)

# (column, protocol, metric) of the Markdown table.
COLUMNS = [("A top-100", "A", "top100_accuracy"), ("A top-10", "A", "top10_accuracy"),
           ("A RMSE", "A", "rmse"), ("B Recall@10", "B", "recall@10"),
           ("B NDCG@10", "B", "ndcg@10"), ("B RMSE", "B", "rmse"),
           ("B validation NDCG@10", "B", "validation_ndcg@10")]
START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"
SECTION = f"""## Multi-task ablation

`python benchmarks/ablation.py` → [`benchmarks/results/ablation.json`](benchmarks/results/ablation.json)

The default joint model changed one way per row (the overrides of `ROWS` in
`benchmarks/ablation.py`), on protocols A and B: test metrics, mean ± std
over the seeds, `-` where the row's model has no such task.

{START}
{END}
"""


def check_rows(names: list[str], protocols: list[str], seeds: list[int],
               extra: list[str]) -> list[str]:
  """What is wrong with the requested rows' configs, one line each."""
  errors = []
  for name in names:
    for protocol in protocols:
      try:
        protocol_config(protocol, seeds[0], [*ROWS[name], *extra])  # validates the row
      except ConfigError as error:
        errors.append(f"row {name!r} (protocol {protocol}): {error} "
                      "(leave the row out with --rows)")
        break
  return errors


def best_joint_row(summaries: dict[tuple[str, str], dict]) -> str | None:
  """The row with retrieval and rating metrics on A and B whose protocol B
  validation NDCG@10 is highest (None without such a row)."""
  scores = {name: summary["validation_metrics"]["ndcg@10"]["mean"]
            for (name, protocol), summary in summaries.items()
            if protocol == "B" and (name, "A") in summaries
            and {"recall@10", "rmse"} <= set(summary["metrics"])
            and "ndcg@10" in summary.get("validation_metrics", {})}
  return max(scores, key=scores.get) if scores else None


def render_table(result: dict) -> str:
  """ablation.json's rows as a Markdown table, `mean ± std` per cell."""
  rows = result["results"]["rows"]
  metrics = {(row["config"], row["protocol"]): row["metrics"] for row in rows}
  lines = ["| config | " + " | ".join(column for column, _, _ in COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 1) + "|"]
  for config in dict.fromkeys(row["config"] for row in rows):
    cells = [metrics.get((config, protocol), {}).get(metric) for _, protocol, metric in COLUMNS]
    lines.append(f"| {config} | " + " | ".join(
        "-" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}"
        for cell in cells) + " |")
  return "\n".join(lines)


def write_markdown(path: Path, block: str) -> None:
  """Replaces what is between the ablation markers of `path` with `block`."""
  text = path.read_text() if path.exists() else ""
  if START not in text or END not in text:
    text = (text.rstrip("\n") + "\n\n" if text else "") + SECTION
  head, rest = text.split(START, 1)
  tail = rest.split(END, 1)[1]
  staging = path.with_name(path.name + ".tmp")
  staging.write_text(f"{head}{START}\n{block}\n{END}{tail}")
  staging.replace(path)


def publish_table(result: dict, markdown: Path | None) -> None:
  commit = (result.get("commit") or "unknown")[:7]
  block = (f"Seeds {', '.join(map(str, result['seeds']))}; commit {commit}; "
           f"{result['machine']}; {result['date'][:10]}.\n\n{render_table(result)}")
  print(block)
  if markdown is not None:
    write_markdown(markdown, block)
    print(f"-> {markdown}")


def run_rows(args) -> dict[tuple[str, str], dict]:
  """run_protocol's summary per (row, protocol), reusing ablation.partial.json's."""
  partial = args.results_dir / "ablation.partial.json"
  saved = json.loads(partial.read_text())["runs"] if partial.exists() else []
  summaries = {}
  for name in args.rows:
    for protocol in args.protocols:
      key = {"config": name, "protocol": protocol, "overrides": [*ROWS[name], *args.set],
             "seeds": args.seeds}
      run = next((run for run in saved if {k: run[k] for k in key} == key), None)
      if run is None:
        print(f"== {name}, protocol {protocol}: {key['overrides']}", flush=True)
        run = {**key, "summary": run_protocol(protocol, args.seeds, key["overrides"],
                                              separate_domains=name in SEPARATE_DOMAINS)}
        saved.append(run)
        write_json(partial, {"runs": saved})
      else:
        print(f"== {name}, protocol {protocol}: reused from {partial}", flush=True)
      summaries[name, protocol] = run["summary"]
  return summaries


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                      metavar="NAME", help=f"rows to run (default all: {', '.join(ROWS)})")
  parser.add_argument("--protocols", nargs="+", default=["A", "B"], choices=["A", "B"])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override applied to every row, e.g. train.epochs=1")
  parser.add_argument("--results-dir", type=Path, default=None,
                      help="default benchmarks/results (results/device with an accelerator)")
  parser.add_argument("--markdown", type=Path,
                      default=Path(__file__).resolve().parent.parent / "BENCHMARKS.md",
                      help="Markdown file the table goes into (default BENCHMARKS.md)")
  parser.add_argument("--no-table", action="store_true",
                      help="print the table but write no Markdown file")
  parser.add_argument("--table-only", action="store_true",
                      help="only render the existing ablation.json's table")
  parser.add_argument("--keep-protocols", action="store_true",
                      help="do not rewrite protocol_a/b.json with the best joint row")
  args = parser.parse_args()
  args.results_dir = args.results_dir or results_dir()
  markdown = None if args.no_table else args.markdown
  path = args.results_dir / "ablation.json"
  previous = (json.loads(path.read_text()) if path.exists()
              else {"results": {"rows": []}, "seeds": []})
  if args.table_only:
    if not previous["results"]["rows"]:
      sys.exit(f"{path}: no ablation results to render")
    return publish_table(previous, markdown)

  errors = check_rows(args.rows, args.protocols, args.seeds, args.set)
  if errors:
    sys.exit("\n".join(errors))
  kept = [row for row in previous["results"]["rows"]
          if not (row["config"] in args.rows and row["protocol"] in args.protocols)]
  if kept and previous["seeds"] != args.seeds:
    sys.exit(f"{path} has rows run with seeds {previous['seeds']}, which this run "
             f"would not replace; use those seeds, or another --results-dir")

  summaries = run_rows(args)
  rows = kept + [{"config": name, "protocol": protocol, "overrides": [*ROWS[name], *args.set],
                  "metrics": {**summary["metrics"],
                              **{f"validation_{metric}": value for metric, value
                                 in summary.get("validation_metrics", {}).items()}}}
                 for (name, protocol), summary in summaries.items()]
  order = list(ROWS)
  rows.sort(key=lambda row: (order.index(row["config"]) if row["config"] in ROWS
                             else len(order), row["protocol"]))
  settings = {"configs": list(dict.fromkeys(row["config"] for row in rows)),
              "protocols": sorted({row["protocol"] for row in rows})}
  path = write_record("ablation", settings, {"rows": rows}, args.seeds, args.results_dir)
  (args.results_dir / "ablation.partial.json").unlink(missing_ok=True)
  print(f"-> {path}")
  best = best_joint_row(summaries)
  if best and not args.keep_protocols:
    print(f"best joint row on protocol B validation NDCG@10: {best}")
    for protocol in ("A", "B"):
      print("-> " + str(write_protocol(f"protocol_{protocol.lower()}",
                                       summaries[best, protocol], args.results_dir)))
  publish_table(json.loads(path.read_text()), markdown)


if __name__ == "__main__":
  main()
