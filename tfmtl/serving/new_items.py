"""New items in an exported model, without retraining the towers.

`add_items(run_dir, items)` takes a trained run and a table of new items (their
id, the run's item feature columns and the columns its content recipe reads),
encodes their text with the run's content encoder (through its fine-tuned
layers, if `content.fine_tune` trained some), and exports the run's model
over the grown catalogue as the next version; the run keeps the grown
catalogue, so later exports and additions include these items. The towers are the
trained ones: a new item's id is out of vocabulary, so its features and its
text place it (a model without content features can only tell new items
apart by their features).

Example (`runs/movielens_100k` trained with `content.encoder: minilm`):

    from tfmtl.serving import add_items
    import pandas as pd
    new = pd.DataFrame({"item_id": ["2001"], "title": ["Arrival"],
                        "genres": ["Drama|Sci-Fi"], "year": [2016]})
    add_items("runs/movielens_100k", new)  # saved_models/movielens_100k/<next>/
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from tfmtl import atomic, runs
from tfmtl.content import CONTENT, item_texts, text_vectors
from tfmtl.data.schema import ITEM_ID, DataError, check_feature_table
from tfmtl.serving.export import export_configured, versions
from tfmtl.serving.index import saved_centroids
from tfmtl.serving.text import ServingText


def add_items(run_dir: str | Path, items: pd.DataFrame, base_path: Optional[str] = None,
              version: Optional[int] = None, source: str = "items") -> Path:
  """Exports the run's model with `items` added to its catalogue (module doc).

  `source` names the items in errors (e.g. their file). Ids already in the
  catalogue (first trained on, or added before) are refused.
  """
  run_dir = Path(run_dir)
  config, vocabulary, catalogue = runs.read_run(run_dir)
  features = vocabulary.item_features
  new = check_feature_table(items, ITEM_ID, {name: spec for name, spec in features.items()
                                            if name != CONTENT}, source)
  known = new[ITEM_ID].isin(catalogue[ITEM_ID].astype(str))
  if known.any():
    raise DataError(f"{source}: item {new[ITEM_ID][known].iloc[0]!r} is already in the "
                    f"catalogue of {run_dir} ({int(known.sum())} such items; if an "
                    f"interrupted add-items left it unexported, `tfmtl export --run "
                    f"{run_dir}` exports the catalogue as it is)")
  if CONTENT in features:
    layers = (runs.content_layers(run_dir) if config.content.fine_tune.objective != "none"
              else None)
    new[CONTENT] = list(text_vectors(item_texts(new, config.content.text), config.content,
                                     config.data.cache_dir, layers))
  grown = pd.concat([catalogue, new[[c for c in catalogue.columns if c in new.columns]]],
                    ignore_index=True)
  _, model = runs.load_run(run_dir, catalogue=grown)
  # The run's catalogue first, so later exports keep the new items: a crash
  # in between leaves the run ahead of its exports (`tfmtl export` catches up),
  # never behind them. An export that fails before its version is written
  # puts the catalogue back.
  model_dir = Path(base_path or config.export.base_path) / config.name
  before = set(versions(model_dir))
  # A partitioned index keeps the latest export's partitions; the new items
  # join their nearest one (no clustering again).
  centroids = (saved_centroids(model_dir / str(max(before)))
               if config.export.index == "partitioned" and before else None)
  _write_catalogue(run_dir, grown)
  try:
    return export_configured(model, config, base_path, version,
                             ServingText.for_run(run_dir, config), centroids)
  except BaseException:
    if not set(versions(model_dir)) - before:
      _write_catalogue(run_dir, catalogue)
    raise


def _write_catalogue(run_dir: Path, catalogue: pd.DataFrame) -> None:
  atomic.write(run_dir / "catalogue.parquet",
               lambda staging: catalogue.to_parquet(staging, index=False))
