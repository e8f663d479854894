"""Saved runs: the folder `tfmtl train` writes, and reading it back.

A run folder holds `tfmtl_run.json` (the marker: tfmtl's version and the
run's name), `config.yaml`, `vocabulary.json`, `catalogue.parquet`,
`weights/` (a TensorFlow checkpoint of the model, without the optimizer),
`history.json` (the epochs' logs), where a user feature is a vector
`user_vectors.parquet`, and where the content encoder was fine-tuned
(`content.fine_tune`) its trained layers, `content_layers.npz` (what
`add-items` encodes new items' text with); `tfmtl evaluate` adds
`metrics.json` and `tfmtl report` a `report/` folder. It is written whole
or not at all, and only a run replaces a run.

Example:

>>> import tempfile
>>> from tfmtl import runs, training
>>> from tfmtl.config import ExperimentConfig
>>> config = ExperimentConfig.from_dict({"train": {"epochs": 1}})
>>> prepared = training.prepare(config)
>>> model = training.fit(config, prepared, verbose=0)
>>> run_dir = runs.save_run(tempfile.mkdtemp() + "/run", config, prepared, model)
>>> sorted(p.name for p in run_dir.iterdir())
['catalogue.parquet', 'config.yaml', 'history.json', 'tfmtl_run.json', 'vocabulary.json',
 'weights']
>>> runs.load_run(run_dir)[0] == config
True
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl import __version__ as tfmtl_version, atomic
from tfmtl.config import ExperimentConfig
from tfmtl.content import load_layers, save_layers
from tfmtl.distribute import is_chief
from tfmtl.features import FeatureVocabulary
from tfmtl.model import MultiTaskModel, build_model

if TYPE_CHECKING:
  from tfmtl.training import Prepared


def default_run_dir(config: ExperimentConfig) -> Path:
  return Path(config.train.run_dir or Path("runs") / config.name)


RUN_MARKER = "tfmtl_run.json"
_RUN_FILES = ("config.yaml", "vocabulary.json", "catalogue.parquet", "weights/model.index")
CONTENT_LAYERS = "content_layers.npz"


def is_run(folder: str | Path) -> bool:
  """Whether `folder` is a saved tfmtl run: it holds the marker file that
  `save_run` writes (or, saved before the marker existed, every run file)."""
  folder = Path(folder)
  return (folder / RUN_MARKER).is_file() or all((folder / name).is_file()
                                                for name in _RUN_FILES)


def check_run_dir(run_dir: str | Path) -> Path:
  """Raises `FileExistsError` unless `run_dir` is free or a tfmtl run that
  `save_run` may replace: a folder of anything else is never touched."""
  run_dir = Path(run_dir)
  if run_dir.exists() and not is_run(run_dir):
    raise FileExistsError(
        f"{run_dir}: exists and is not a tfmtl run (it has no {RUN_MARKER}), so tfmtl will "
        "not replace it; choose another name or train.run_dir, or move that folder away")
  return run_dir


def save_run(run_dir: str | Path, config: ExperimentConfig, prepared: Prepared,
             model: MultiTaskModel) -> Path:
  """Writes config, vocabularies, catalogue and weights, then puts them in
  place of `run_dir` at once (`tfmtl.atomic.write_folder`). An existing
  `run_dir` is replaced only if it is a tfmtl run (`check_run_dir`); if
  writing fails, `run_dir` is left as it was and nothing else remains.

  A multi-worker run's other workers write theirs to a temporary folder,
  which is removed: the chief's is the run (`tfmtl.distribute.is_chief`).
  """
  run_dir = check_run_dir(run_dir)
  write = lambda folder: _write_run(folder, config, prepared, model)
  if not is_chief():
    with tempfile.TemporaryDirectory() as scratch:
      write(Path(scratch))
    return run_dir
  run_dir.parent.mkdir(parents=True, exist_ok=True)
  return atomic.write_folder(run_dir, write, replaceable=is_run)


def _write_run(folder: Path, config: ExperimentConfig, prepared: Prepared,
               model: MultiTaskModel) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / RUN_MARKER).write_text(json.dumps({"tfmtl_version": tfmtl_version,
                                               "name": config.name}) + "\n")
  (folder / "config.yaml").write_text(config.to_yaml())
  prepared.vocabulary.save(folder / "vocabulary.json")
  prepared.data.items.to_parquet(folder / "catalogue.parquet", index=False)
  if model.user_vectors is not None:
    model.user_vectors.to_parquet(folder / "user_vectors.parquet", index=False)
  if prepared.content is not None and prepared.content.fine_tuned_layers:
    save_layers(folder / CONTENT_LAYERS, prepared.content.fine_tuned_layers)
  model.save_weights(str(folder / "weights" / "model"))
  if model.history is not None and model.history.history:
    (folder / "history.json").write_text(json.dumps(
        {"epoch": model.history.epoch, **model.history.history}, indent=2))


def save_metrics(run_dir: str | Path, metrics: dict) -> Path:
  """Writes a run's `metrics.json` whole or not at all (`tfmtl.atomic`), so
  `tfmtl report` never reads half of it."""
  return atomic.write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2))


def content_layers(run_dir: str | Path) -> list[np.ndarray]:
  """A run's fine-tuned content encoder layers (`content.fine_tune`), as
  `tfmtl.text_tuning.FineTunedText(weights=...)` takes them."""
  path = Path(run_dir) / CONTENT_LAYERS
  try:
    return load_layers(path)
  except (OSError, ValueError, KeyError) as error:
    raise FileNotFoundError(f"{path}: the run's fine-tuned content encoder layers are not "
                            f"readable ({error}); train the run again") from None


def read_run(run_dir: str | Path) -> tuple[ExperimentConfig, FeatureVocabulary, pd.DataFrame]:
  """A saved run's config, vocabulary and catalogue (no model is built)."""
  run_dir = Path(run_dir)
  for name in _RUN_FILES:
    if not (run_dir / name).exists():
      raise FileNotFoundError(f"{run_dir}: not a tfmtl run ({name} is missing); "
                              "train one with `tfmtl train`")
  # Runs write their data paths absolute (`to_yaml`); older ones wrote them
  # as given, relative to the working directory.
  return (ExperimentConfig.from_file(run_dir / "config.yaml", relative_to=Path.cwd()),
          FeatureVocabulary.load(run_dir / "vocabulary.json"),
          pd.read_parquet(run_dir / "catalogue.parquet"))


def load_run(run_dir: str | Path, catalogue: Optional[pd.DataFrame] = None
             ) -> tuple[ExperimentConfig, MultiTaskModel]:
  """Rebuilds a saved run's model with its trained weights (over `catalogue`,
  by default the run's own)."""
  run_dir = Path(run_dir)
  config, vocabulary, own_catalogue = read_run(run_dir)
  catalogue = own_catalogue if catalogue is None else catalogue
  user_vectors = run_dir / "user_vectors.parquet"
  model = build_model(config, vocabulary, catalogue,
                      pd.read_parquet(user_vectors) if user_vectors.exists() else None)
  model.create_variables()
  try:
    status = model.load_weights(str(run_dir / "weights" / "model"))
    status.assert_existing_objects_matched().expect_partial()  # no optimizer state
  except (AssertionError, ValueError, IndexError, tf.errors.OpError) as error:
    raise ValueError(f"{run_dir / 'weights'}: the checkpoint is unreadable or does not match "
                     f"the model that {run_dir / 'config.yaml'} and vocabulary.json describe: "
                     f"{str(error).strip().splitlines()[0]}") from None
  return config, model
