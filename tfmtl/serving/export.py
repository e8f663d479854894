"""SavedModel export in TF Serving's layout: `<base_path>/<name>/<version>/`.

The export answers from raw features (ids as strings); vocabularies, the item
catalogue with its features (text vectors included) and candidate embeddings,
and any vector user features (propagated interests, looked up by `user_id`)
travel inside. Its signatures (`serving_default`, `retrieve`, `rank`,
`recommend`, `query_embedding`, `candidate_embedding` and, for models that
read item text, `candidate_embedding_from_features`) are described in
`tfmtl.serving.signatures`.

Each version carries TF Serving warm-up requests, and the base path gets a
`models.config` and an example `batching.config` (`tfmtl.serving.tf_serving`).
The version is written to a hidden temporary folder and renamed, so a
crash never leaves a half-written version for TF Serving to pick up, and an
existing version is never overwritten; `keep_versions` prunes older ones.
Hidden folders that a killed export left (their process, on this host,
is gone) are removed by the next export to the same name.

Example (`model` a trained `MultiTaskModel`, as in `tfmtl.model`):

    from tfmtl.serving import export_model
    path = export_model(model, "saved_models", "movielens_100k")  # .../1 first
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfmtl.config import ExperimentConfig, PartitionedConfig, ScannConfig, check_name
from tfmtl.serving.signatures import ServingModule
from tfmtl.serving.text import ServingText
from tfmtl.serving.tf_serving import server_configs, write_warmup_requests


def versions(model_dir: Path) -> list[int]:
  """The version numbers exported under `model_dir` (`<base_path>/<name>`), sorted."""
  return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) \
      if model_dir.is_dir() else []


_HIDDEN = re.compile(r"^\.(tmp|removing)-\d+-\d+\.(?P<pid>\d+)@(?P<host>.+)$")


def _hidden_folder(model_dir: Path, kind: str, version: int) -> Path:
  """A hidden folder (`.tmp-` staging, `.removing-` pruning) named after
  this process and host, so a later export can tell when it was left behind."""
  return model_dir / (f".{kind}-{version}-{np.random.randint(1 << 30)}"
                      f".{os.getpid()}@{socket.gethostname()}")


def _remove_left_behind(model_dir: Path) -> None:
  """Removes hidden folders whose export was killed: made on this host by
  a process no longer running. Other hosts' (a shared base path) are kept."""
  host = socket.gethostname()
  for path in model_dir.iterdir():
    match = _HIDDEN.match(path.name)
    if match and match["host"] == host and not _running(int(match["pid"])):
      shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
  """Whether process `pid` runs (always True on Windows, where signal 0
  would terminate it)."""
  if os.name == "nt":
    return True
  try:
    os.kill(pid, 0)  # signal 0: only checks
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  return True


def latest_export(config: ExperimentConfig) -> Path:
  """The newest version folder of `config`'s model under its base path."""
  model_dir = Path(config.export.base_path) / config.name
  numbers = versions(model_dir)
  if not numbers:
    raise FileNotFoundError(f"{model_dir}: no exported version; run `tfmtl export` first")
  return model_dir / str(numbers[-1])


def export_configured(model, config: ExperimentConfig, base_path: Optional[str] = None,
                      version: Optional[int] = None, text: Optional[ServingText] = None,
                      centroids: Optional[np.ndarray] = None) -> Path:
  """`export_model` as `config.export` says (the base path unless given);
  `text`: the model's text encoder, when it reads item text
  (`ServingText.for_run` or `ServingText.for_config`); `centroids`: a
  partitioned index's, kept from an earlier export."""
  options = config.export
  return export_model(model, base_path or options.base_path, config.name, options.top_k,
                      version, options.recommend_candidates,
                      options.recommend_weights or None, options.keep_versions,
                      options.index, options.scann, text, options.partitioned, centroids)


def export_model(model, base_path: str | Path, name: str, top_k: int = 100,
                 version: Optional[int] = None, recommend_candidates: int = 100,
                 recommend_weights: Optional[dict[str, float]] = None,
                 keep_versions: int = 0, index: str = "brute_force",
                 scann: Optional[ScannConfig] = None,
                 text: Optional[ServingText] = None,
                 partitioned: Optional[PartitionedConfig] = None,
                 centroids: Optional[np.ndarray] = None) -> Path:
  """Exports `model` as `<base_path>/<name>/<version>/` and returns that path.

  Args:
    model: a trained `MultiTaskModel`.
    base_path: TF Serving's model base path (e.g. `saved_models`).
    name: the model name: letters, digits, '-', '_' and '.', not starting
      with '.'.
    top_k: number of items `serving_default` returns (clipped to the catalogue).
    version: version number (default: one more than the highest present).
    recommend_candidates, recommend_weights: `recommend`'s shortlist size and
      blend weights (see `ServingModule`).
    keep_versions: keep only this many newest versions (0: keep all).
    index, scann: the retrieval index, `brute_force`, `partitioned` or
      `scann`, and the ScaNN options (see `tfmtl.serving.index`).
    text: the model's text encoder, when it reads item text (see
      `ServingModule`).
    partitioned, centroids: the partitioned index's options, and an
      earlier export's centroids to keep (see `ServingModule`).
  """
  check_name(name, "export name")
  model_dir = Path(base_path) / name
  version = max(versions(model_dir), default=0) + 1 if version is None else version
  if version < 1:
    raise ValueError(f"export version {version}: must be a positive integer")
  target = model_dir / str(version)
  if target.exists():
    raise FileExistsError(f"{target}: version {version} already exists; "
                          "exports never overwrite a version")
  module = ServingModule(model, top_k, recommend_candidates, recommend_weights, index, scann,
                         text, partitioned, centroids)
  created = [folder for folder in (Path(base_path), model_dir) if not folder.exists()]
  model_dir.mkdir(parents=True, exist_ok=True)
  _remove_left_behind(model_dir)
  _write_version(module, target, name, created)
  if keep_versions:
    for old in versions(model_dir)[:-keep_versions]:
      if old != version:  # hidden first: TF Serving never sees a version half-removed
        removing = _hidden_folder(model_dir, "removing", old)
        (model_dir / str(old)).rename(removing)
        shutil.rmtree(removing)
  return target


def _write_version(module, target: Path, name: str, created: list[Path]) -> None:
  """Writes the version folder and the base path's server configs together:
  all are staged first, then renamed into place. If anything fails (a full
  disk, a read-only folder), the base path is left as it was: the staged
  files, and the folders in `created`, are removed."""
  model_dir, base_path = target.parent, target.parent.parent
  staging = _hidden_folder(model_dir, "tmp", int(target.name))
  configs, writing = {}, "the SavedModel"  # staged file -> its place; what is being written
  try:
    tf.saved_model.save(module, str(staging), signatures=module.functions())
    writing = "its warm-up requests"
    write_warmup_requests(module, staging, name)
    for file_name, text in server_configs(base_path, also=(name,)).items():
      writing = str(base_path / file_name)
      staged = base_path / f".{file_name}.{staging.name}"
      configs[staged] = base_path / file_name
      staged.write_text(text)
    writing = str(target)
    staging.rename(target)
    for staged, place in configs.items():
      writing = str(place)
      staged.replace(place)
  except BaseException as error:  # the signatures are traced in the save, too
    if target.exists() and not staging.exists():
      target.rename(staging)  # removed below
    for folder in reversed(created):
      shutil.rmtree(folder, ignore_errors=True)
    if not isinstance(error, (OSError, tf.errors.OpError)):
      raise
    reason = getattr(error, "message", None) or str(error)
    raise OSError(f"{target}: not exported, and {base_path} is as it was: writing "
                  f"{writing}: {reason.strip().splitlines()[0]}") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    for staged in configs:
      staged.unlink(missing_ok=True)
  return target
