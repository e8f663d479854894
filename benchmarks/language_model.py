"""The language model in the loop: MiniLM fine-tuned on items, then read by
the recommender, on protocol C (cold-start items).

Protocol C's split (`benchmarks/protocol_c.py`): 168 movies held out with
all their ratings are the only candidates. Each row trains the default
model whose item features are the content vector (`text`: of "{title}
({year})") or genres, year and the content vector (`text+genres`: of
"{title} ({year}). {genres}"); rows differ in how the vectors are made
(`content.fine_tune`):

- `frozen`: the pretrained encoder as is;
- `cls_pretrain`: its top layers fine-tuned to predict the movie's genres
  from the text (classification -> recommendation transfer), pooled vector;
- `cf_align`: its top layers fine-tuned to map the text to a trained run's
  candidate embedding of the movie (the default model, trained on the same
  training split, so held-out movies are never targets), projected vector;
  `cf_align_top2`: the same with 2 layers trained instead of 4;
  `cf_align_lora`: the 4 layers frozen, rank-8 LoRA updates of their
  attention's query and value trained instead (learning rate 1e-3, the
  usual LoRA rate, not tuned).

Per row, over the seeds (the model's and the stage's): Recall@10, NDCG@10
and Recall@50 on the held-out movies, and the fine-tuning stage's median
seconds per epoch over the 1,682 movies (`epoch_s`) and for computing the
lower layers' states once (`states_s`). Every stage runs: the content
tables go to a cache of the benchmark's own, which links the data and the
encoder's checkpoint from tfmtl's cache.

    python benchmarks/language_model.py [--seeds 0 1 2] [--rows ...]

Writes benchmarks/results/language_model.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import tfmtl  # noqa: F401  (binds Keras 2 first)
from tfmtl import evaluation, runs, training
from tfmtl.config import ExperimentConfig
from tfmtl.content import CONTENT
from tfmtl.data.splits import held_out_candidates
from tfmtl.data.wheels import default_cache_dir

from common import format_summaries, summaries, write_record
from protocol_c import SPLIT, TieBreakingScorer, with_item_features

FEATURES = {  # name: (item features kept, text recipe)
    "text": ((CONTENT,), "{title} ({year})"),
    "text+genres": (("genres", "year", CONTENT), "{title} ({year}). {genres}"),
}
STAGE = ["content.fine_tune.top_layers=4", "content.fine_tune.epochs=10"]  # the defaults
ROWS = {  # name: (features, content.fine_tune overrides)
    "frozen": ("text", []),
    "cls_pretrain": ("text", ["content.fine_tune.objective=classify", *STAGE]),
    "cf_align": ("text", ["content.fine_tune.objective=align", *STAGE]),
    "cf_align_top2": ("text", ["content.fine_tune.objective=align", *STAGE,
                               "content.fine_tune.top_layers=2"]),
    "cf_align_lora": ("text", ["content.fine_tune.objective=align", *STAGE,
                               "content.fine_tune.lora_rank=8",
                               "content.fine_tune.learning_rate=1e-3"]),
    "frozen+genres": ("text+genres", []),
    "cf_align+genres": ("text+genres", ["content.fine_tune.objective=align", *STAGE]),
}
METRICS = ("recall@10", "ndcg@10", "recall@50")


def fresh_cache(folder: Path) -> Path:
  """A cache folder holding links to tfmtl's cached data and checkpoints but
  no content tables, so every fine-tuning stage runs (and is timed)."""
  cache = folder / "cache"
  cache.mkdir()
  for entry in default_cache_dir().iterdir():
    if entry.name != "item_content":
      (cache / entry.name).symlink_to(entry)
  return cache


def run_row(name: str, seed: int, folder: Path) -> dict:
  features, tuning = ROWS[name]
  kept, recipe = FEATURES[features]
  base = [*SPLIT, f"seed={seed}", f"train.run_dir={folder / 'run'}", "train.validate_every=0",
          f"data.cache_dir={folder / 'cache'}"]
  aligned_to = folder / f"cf_{seed}"
  if "content.fine_tune.objective=align" in tuning and not aligned_to.exists():
    config = ExperimentConfig().with_overrides(base)
    prepared = training.prepare(config)
    runs.save_run(aligned_to, config, prepared, training.fit(config, prepared, verbose=0))
  config = ExperimentConfig().with_overrides([
      *base, "content.encoder=minilm", f"content.text='{recipe}'",
      f"content.fine_tune.seed={seed}", f"content.fine_tune.run={aligned_to}", *tuning])
  prepared = training.prepare(config)
  stage = prepared.content.fine_tune  # {} when not fine-tuned
  candidates = held_out_candidates(config.split, prepared.split.test)
  prepared = with_item_features(prepared, kept)
  model = training.fit(config, prepared, verbose=0)
  scorer = TieBreakingScorer(evaluation.ModelScorer(model, prepared.data), seed)
  metrics = evaluation.retrieval_metrics(scorer, prepared.split, [10, 50], candidates=candidates)
  result = {m: metrics[m] for m in METRICS}
  if stage:
    result.update(epoch_s=float(np.median(stage["epoch_seconds"])),
                  states_s=stage["states_seconds"])
  print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()),
        flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
  args = parser.parse_args()
  by_row = {name: [] for name in args.rows}
  with tempfile.TemporaryDirectory(prefix="tfmtl_language_model_") as folder:
    fresh_cache(Path(folder))
    for seed in args.seeds:
      for name in args.rows:
        by_row[name].append(run_row(name, seed, Path(folder)))
  rows = [{"config": name, "protocol": "C", "features": ROWS[name][0],
           "settings": ROWS[name][1],
           "metrics": summaries(results)}
          for name, results in by_row.items()]
  path = write_record("language_model", {"split": SPLIT, "encoder": "minilm",
                                         "recipes": {k: v[1] for k, v in FEATURES.items()}},
                      {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['config']:<16} {format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
