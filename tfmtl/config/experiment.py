"""The whole experiment's config: its sections, read from YAML and
overridden by `key.path=value` strings."""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from pathlib import Path
from typing import Any, Optional

from tfmtl.config.data import ContentConfig, DataConfig, PropagationConfig, SplitConfig
from tfmtl.config.evaluation import EvaluateConfig, ExportConfig, TuneConfig
from tfmtl.config.model import ModelConfig
from tfmtl.config.section import Section, check_name, load_section
from tfmtl.config.tasks import TaskConfig, _task_type, default_tasks, history_length
from tfmtl.config.training import DistillationConfig, TrainConfig, TransferConfig
from tfmtl.config.yaml_text import load_yaml, yaml_io
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class ExperimentConfig(Section):
  """A whole experiment. See `tfmtl.config` for an example."""
  name: str = "movielens_100k"
  seed: int = 42
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  content: ContentConfig = dataclasses.field(default_factory=ContentConfig)
  split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
  propagation: PropagationConfig = dataclasses.field(default_factory=PropagationConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  tasks: dict[str, TaskConfig] = dataclasses.field(default_factory=default_tasks)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)
  distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
  evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)

  def _validate(self):
    from tfmtl.optimizers import TPU_EMBEDDING_OPTIMIZERS  # pylint: disable=import-outside-toplevel
    check_name(self.name, "name")
    retrieval = [n for n, t in self.tasks.items() if t.type == "retrieval"]
    if len(retrieval) > 1:
      raise ConfigError(f"tasks: at most one retrieval task, got {retrieval}")
    if not self.tasks:
      raise ConfigError("tasks: at least one task is required")
    if self.model.tpu_embedding and self.train.optimizer not in TPU_EMBEDDING_OPTIMIZERS:
      raise ConfigError(f"train.optimizer: {self.train.optimizer!r}: with model.tpu_embedding "
                        f"it must be one of {', '.join(TPU_EMBEDDING_OPTIMIZERS)}, which the "
                        "TPU embedding engine runs")
    stopping = self.train.early_stopping
    if stopping.metric:
      from tfmtl.evaluation import metric_names  # pylint: disable=import-outside-toplevel
      known = metric_names(self.tasks, self.evaluate.ks)
      if stopping.metric not in known:
        raise ConfigError(f"train.early_stopping.metric: {stopping.metric!r} is not a "
                          "validation metric of this config's tasks and evaluate.ks; "
                          f"expected one of {', '.join(known)}")
    paired = {n: t for n, t in self.tasks.items() if _task_type(t.type).reads_pair}
    multitask = self.model.multitask
    for pair in multitask.coupling_pairs or (
        itertools.combinations(paired, 2) if multitask.coupling else ()):
      for name in pair:
        if name not in paired:
          raise ConfigError(f"model.multitask.coupling_pairs: {name!r} is not a ranking task "
                            f"(those are: {list(paired)})")
      if paired[pair[0]].layers != paired[pair[1]].layers:
        raise ConfigError(f"model.multitask.coupling_pairs: the heads of {pair[0]!r} and "
                          f"{pair[1]!r} have different layers ({paired[pair[0]].layers} and "
                          f"{paired[pair[1]].layers}); coupling compares same-shaped weights")
    given = (self.data.train, self.data.validation, self.data.test)
    if (self.split.protocol == "given") != any(given):
      raise ConfigError("split.protocol: given reads data.train, data.validation and data.test"
                        if any(given) else
                        "split.protocol: given needs data.train and data.test (files)")
    if self.split.protocol == "given" and not (self.data.train and self.data.test):
      raise ConfigError("data.train, data.test: split.protocol given needs both")
    if self.data.domain_column and self.transfer.source is not None:
      raise ConfigError("data.domain_column: not with transfer.source (a source's interactions "
                        "have no domain); give the source's rows a domain of their own and "
                        "join both into data.interactions")
    if self.model.sequence.content and self.content.encoder == "none":
      raise ConfigError("model.sequence.content: the history reads the items' content "
                        "vectors, which need content.encoder (e.g. minilm)")
    scored = [n for n, t in self.tasks.items()
              if t.type == "retrieval" or _task_type(t.type).reads_pair]
    for name in self.export.recommend_weights:
      if name not in scored:
        raise ConfigError(f"export.recommend_weights: {name!r} is not a retrieval or "
                          f"ranking task (those are: {scored})")

  @property
  def history_length(self) -> int:
    """Length of the `history` feature (see `tfmtl.config.history_length`)."""
    return history_length(self.model, self.tasks)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
    """Builds and checks the config from plain values (what YAML gives)."""
    return load_section(cls, values)

  @classmethod
  def from_file(cls, *paths: str | Path,
                relative_to: Optional[str | Path] = None) -> "ExperimentConfig":
    """Reads YAML configs, each layered over those before it: its keys
    replace theirs, section by section, and a mapping of named entries
    (`tasks`, `data.user_features`, ...) is replaced whole. Relative data
    file paths (`data.interactions`, `users`, `items`, and those of
    `transfer.source`) are read relative to the folder of the file that
    names them (`relative_to`: that folder instead); other paths are the
    working directory's. Errors name the file and the key."""
    config = None
    for path in map(Path, paths):
      layer = _read_yaml(path)
      _rebase_data_paths(layer, Path(relative_to) if relative_to else path.parent)
      try:
        if config is None:
          config = cls.from_dict(layer)
        else:
          values = config.to_dict()
          _layer(config, values, layer)
          config = cls.from_dict(values)
      except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config if config is not None else cls()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_yaml(self) -> str:
    """The config as YAML that `from_file` reads back, keys in field order;
    data file paths written absolute, so the file reads the same data from
    any folder."""
    values = self.to_dict()
    _rebase_data_paths(values, Path.cwd())
    stream = io.StringIO()
    yaml_io().dump(values, stream)
    return stream.getvalue()

  def with_overrides(self, overrides: list[str]) -> "ExperimentConfig":
    """Returns a copy with `dotted.key=value` overrides (values are YAML;
    `key=` is the empty string). A key below a mapping of named entries
    (`tasks.clicks.type=binary`) adds the entry."""
    values = self.to_dict()
    for override in overrides:
      key, sep, raw = override.partition("=")
      if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key.path=value")
      try:
        _set(values, key.split("."), load_yaml(raw) if raw.strip() else "")
      except ConfigError as error:
        raise ConfigError(f"override {override!r}: {error}") from None
    return ExperimentConfig.from_dict(values)


def _read_yaml(path: Path) -> dict:
  """A config file's mapping; errors name the file."""
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ConfigError(f"{path}: config file not found") from None
  except IsADirectoryError:
    raise ConfigError(f"{path}: is a folder, not a config file") from None
  except UnicodeDecodeError as error:
    raise ConfigError(f"{path}: not a text YAML file ({error.reason} at byte "
                      f"{error.start})") from None
  except OSError as error:
    raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
  try:
    values = load_yaml(text) or {}
  except ConfigError as error:
    raise ConfigError(f"{path}: {error}") from None
  if not isinstance(values, dict):
    raise ConfigError(f"{path}: the top level must be a mapping of sections")
  return values


# the data files a `data` section reads
_DATA_PATHS = ("interactions", "users", "items", "train", "validation", "test")


def _rebase_data_paths(values: dict, folder: Path) -> None:
  """Joins `folder` before each relative data file path of config `values`
  (its `data` and `transfer.source` sections): the paths as seen from the
  working directory (absolute where `folder` is)."""
  transfer = values.get("transfer")
  for section in (values.get("data"), transfer.get("source") if isinstance(transfer, dict)
                  else None):
    if not isinstance(section, dict):
      continue
    for key in _DATA_PATHS:
      path = section.get(key)
      if isinstance(path, str) and path and "://" not in path and not os.path.isabs(path):
        section[key] = os.path.normpath(os.path.join(folder, path))


def _layer(config: Any, values: dict, layer: dict) -> None:
  """Writes `layer` over `values` (`config`'s dict): into the sections it
  names, key by key; any other value (a setting, a mapping of named
  entries) is replaced whole."""
  for key, value in layer.items():
    current = getattr(config, key, None)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
      _layer(current, values[key], value)
    else:
      values[key] = value


def _set(values: dict, keys: list[str], value: Any) -> None:
  """Sets `values[keys[0]][keys[1]]...` to `value`, adding missing mappings
  below the top level (whose sections all exist)."""
  node = values
  for depth, key in enumerate(keys[:-1]):
    child = node.get(key)
    if child is None and depth > 0:
      child = node[key] = {}
    if not isinstance(child, dict):
      name = ".".join(keys[:depth + 1])
      raise ConfigError(f"unknown key {name!r}" if child is None else
                        f"{name!r} is a value, not a section")
    node = child
  node[keys[-1]] = value
