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
  `cf_align_top2`, `cf_align_all`: the same with 2 or all 6 layers trained
  instead of 4;
  `cf_align_lora`: the 4 layers frozen, rank-8 LoRA updates of their
  attention's query and value trained instead (learning rate 1e-3, the
  usual LoRA rate, not tuned);
- `top1`, `top2`, `lora`, `top1+genres`: its top layer, top two layers,
  or rank-8 LoRA updates of the top two, trained inside a recommender of
  the row's features for one epoch (`objective: recommend`,
  `tfmtl.text_tower`; layers at 2e-4, LoRA at 1e-3);
- `cf_align_recommend+genres`, `cf_align_all_recommend+genres`: the 4
  (or 6) layers `cf_align+genres` (`cf_align_all+genres`) aligned, then
  trained on inside the recommender for one epoch
  (`content.fine_tune.init`: the recommender keeps fine-tuning them).

Protocol B (`--b-rows`; the per-user 80/10/10 split of the distillation
benchmark, all 1,682 movies candidates) asks whether text costs warm items
anything and whether an id-only model can learn what it adds:

- `plain`: the default model (ids, genres, year), no text;
- `frozen`, `cf_align`: the default model plus the content vector of
  "{title} ({year}). {genres}", frozen or aligned to the `plain` run;
- `distilled_student`: the default model without text, distilled from the
  `cf_align` run (listwise, as the distillation benchmark's run teachers).

Per row, over the seeds (the model's and the stage's): Recall@10, NDCG@10
(and on protocol C Recall@50) on the test split, the fine-tuning stage's
median seconds per epoch over the 1,682 movies (`epoch_s`) and for
computing the lower layers' states once (`states_s`), and the
recommender's median seconds per training epoch (`model_epoch_s`). Every
stage runs: the content tables go to a cache of the benchmark's own, which
links the data and the encoder's checkpoint from tfmtl's cache.

    python benchmarks/language_model.py [--seeds 0 1 2] [--rows ...] [--b-rows ...]

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
from tfmtl.text_tower import tune_in_recommender

from tfmtl.training import EpochTimer
from common import format_summaries, summaries, write_record
from protocol_c import SPLIT, TieBreakingScorer, with_item_features

FEATURES = {  # name: (item features kept, text recipe)
    "text": ((CONTENT,), "{title} ({year})"),
    "text+genres": (("genres", "year", CONTENT), "{title} ({year}). {genres}"),
}
STAGE = ["content.fine_tune.top_layers=4", "content.fine_tune.epochs=10"]  # the defaults
IN_RECOMMENDER = ["content.fine_tune.objective=recommend", "content.fine_tune.epochs=1"]
ROWS = {  # name: (features, content.fine_tune overrides)
    "frozen": ("text", []),
    "cls_pretrain": ("text", ["content.fine_tune.objective=classify", *STAGE]),
    "cf_align": ("text", ["content.fine_tune.objective=align", *STAGE]),
    "cf_align_top2": ("text", ["content.fine_tune.objective=align", *STAGE,
                               "content.fine_tune.top_layers=2"]),
    "cf_align_all": ("text", ["content.fine_tune.objective=align", *STAGE,
                              "content.fine_tune.top_layers=6"]),
    "cf_align_lora": ("text", ["content.fine_tune.objective=align", *STAGE,
                               "content.fine_tune.lora_rank=8",
                               "content.fine_tune.learning_rate=1e-3"]),
    "frozen+genres": ("text+genres", []),
    "cf_align+genres": ("text+genres", ["content.fine_tune.objective=align", *STAGE]),
    "cf_align_all+genres": ("text+genres", ["content.fine_tune.objective=align", *STAGE,
                                            "content.fine_tune.top_layers=6"]),
    "top1": ("text", [*IN_RECOMMENDER, "content.fine_tune.top_layers=1"]),
    "top2": ("text", [*IN_RECOMMENDER, "content.fine_tune.top_layers=2"]),
    "lora": ("text", [*IN_RECOMMENDER, "content.fine_tune.top_layers=2",
                      "content.fine_tune.lora_rank=8", "content.fine_tune.learning_rate=1e-3"]),
    "top1+genres": ("text+genres", [*IN_RECOMMENDER, "content.fine_tune.top_layers=1"]),
    "cf_align_recommend+genres": ("text+genres", [*IN_RECOMMENDER,
                                                  "content.fine_tune.top_layers=4"]),
    "cf_align_all_recommend+genres": ("text+genres", [*IN_RECOMMENDER,
                                                      "content.fine_tune.top_layers=6"]),
}
STARTS = {  # row: the row whose layers it keeps training (fine_tune.init)
    "cf_align_recommend+genres": "cf_align+genres",
    "cf_align_all_recommend+genres": "cf_align_all+genres"}
METRICS = ("recall@10", "ndcg@10", "recall@50")
SPLIT_B = ["split.protocol=per_user", "split.fractions=[0.8, 0.1, 0.1]"]
TEXT_B = ["content.encoder=minilm", f"content.text='{FEATURES['text+genres'][1]}'"]
LISTWISE = ["distillation.listwise_weight=5", "distillation.listwise_temperature=0.1"]
ROWS_B = {  # name: (features, overrides), trained in this order at each seed
    "plain": ("ids+genres", []),
    "frozen": ("text+genres", TEXT_B),
    "cf_align": ("text+genres", [*TEXT_B, "content.fine_tune.objective=align", *STAGE]),
    "distilled_student": ("ids+genres", LISTWISE),
}


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
  kept = FEATURES[ROWS[name][0]][0]
  config = row_config(name, seed, folder)
  if name in STARTS:  # the starting row's table, made (or taken from the cache) first
    start = folder / f"{STARTS[name]}_{seed}"
    if not start.exists():
      training.prepare(row_config(STARTS[name], seed, folder)).content.save(start)
    config = config.with_overrides([f"content.fine_tune.init={start}"])
  in_recommender = config.content.fine_tune.objective == "recommend"
  prepared = training.prepare(config.with_overrides(["content.fine_tune.objective=none",
                                                     "content.fine_tune.init=null"])
                              if in_recommender else config)
  candidates = held_out_candidates(config.split, prepared.split.test)
  table = prepared.content
  prepared = with_item_features(prepared, kept)._replace(content=table)
  if in_recommender:  # the stage's recommender reads the row's features too
    prepared = tune_in_recommender(config, prepared)
  stage = prepared.content.fine_tune  # {} when not fine-tuned
  model, epoch_s = _fit(config, prepared)
  scorer = TieBreakingScorer(evaluation.ModelScorer(model, prepared.data), seed)
  metrics = evaluation.retrieval_metrics(scorer, prepared.split, [10, 50], candidates=candidates)
  return _result(name, seed, {m: metrics[m] for m in METRICS}, stage, epoch_s)


def row_config(name: str, seed: int, folder: Path) -> ExperimentConfig:
  """Row `name`'s config at `seed`; an `align` row's target run (the
  default model on the same split) is trained first, once per seed."""
  features, tuning = ROWS[name]
  base = [*SPLIT, f"seed={seed}", f"train.run_dir={folder / 'run'}", "train.validate_every=0",
          f"data.cache_dir={folder / 'cache'}"]
  aligned_to = folder / f"cf_{seed}"
  if "content.fine_tune.objective=align" in tuning and not aligned_to.exists():
    config = ExperimentConfig().with_overrides(base)
    prepared = training.prepare(config)
    runs.save_run(aligned_to, config, prepared, training.fit(config, prepared, verbose=0))
  return ExperimentConfig().with_overrides([
      *base, "content.encoder=minilm", f"content.text='{FEATURES[features][1]}'",
      f"content.fine_tune.seed={seed}", f"content.fine_tune.run={aligned_to}", *tuning])


def run_b_row(name: str, seed: int, folder: Path) -> dict:
  """Protocol B's row `name` at `seed`; `plain` and `cf_align` are saved as
  runs in `folder`, the alignment target and the teacher of later rows."""
  overrides = [*SPLIT_B, f"seed={seed}", f"train.run_dir={folder / 'run'}",
               "train.validate_every=0", f"data.cache_dir={folder / 'cache'}",
               f"content.fine_tune.seed={seed}", f"content.fine_tune.run={folder / f'plain_{seed}'}",
               *ROWS_B[name][1]]
  if name == "distilled_student":
    overrides.append(f"distillation.teacher={folder / f'cf_align_{seed}'}")
  config = ExperimentConfig().with_overrides(overrides)
  prepared = training.prepare(config)
  model, epoch_s = _fit(config, prepared)
  if name in ("plain", "cf_align"):
    runs.save_run(folder / f"{name}_{seed}", config, prepared, model)
  metrics = evaluation.evaluate_model(model, prepared.data, prepared.split, [10])
  return _result(name, seed, {m: metrics[m] for m in METRICS[:2]},
                 prepared.content.fine_tune if prepared.content else {}, epoch_s)


def _fit(config: ExperimentConfig, prepared: training.Prepared):
  """The fitted model and its median seconds per epoch."""
  timer = EpochTimer()
  model = training.fit(config, prepared, verbose=0, callbacks=[timer])
  return model, float(np.median(timer.times))


def _result(name: str, seed: int, result: dict, stage: dict, epoch_s: float) -> dict:
  if stage:
    result.update(epoch_s=float(np.median(stage["epoch_seconds"])),
                  states_s=stage["states_seconds"])
  result["model_epoch_s"] = epoch_s
  print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()),
        flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
  parser.add_argument("--b-rows", nargs="*", default=list(ROWS_B), choices=list(ROWS_B))
  args = parser.parse_args()
  by_row = {("C", name): [] for name in args.rows}
  by_row.update({("B", name): [] for name in args.b_rows})
  with tempfile.TemporaryDirectory(prefix="tfmtl_language_model_") as folder:
    fresh_cache(Path(folder))
    for seed in args.seeds:
      for name in args.b_rows:
        by_row["B", name].append(run_b_row(name, seed, Path(folder)))
      for name in args.rows:
        by_row["C", name].append(run_row(name, seed, Path(folder)))
  settings = {"C": ROWS, "B": ROWS_B}
  rows = [{"config": name, "protocol": protocol, "features": settings[protocol][name][0],
           "settings": settings[protocol][name][1], "metrics": summaries(results)}
          for (protocol, name), results in by_row.items()]
  path = write_record("language_model", {"split": SPLIT, "split_b": SPLIT_B, "encoder": "minilm",
                                         "recipes": {k: v[1] for k, v in FEATURES.items()}},
                      {"rows": rows}, args.seeds)
  for row in rows:
    print(f"{row['protocol']} {row['config']:<18} {format_summaries(row['metrics'])}")
  print(f"-> {path}")


if __name__ == "__main__":
  main()
