"""One typed experiment config: load, validate, override.

A whole experiment (data, split, model, tasks, training, evaluation, export)
is one `ExperimentConfig`, read from a YAML file and overridden by
`key.path=value` strings (what the CLI's `--set` passes). Its sections are
dataclasses, one module per area (`data`, `model`, `tasks`, `training`,
`evaluation`); pydantic loads them (`tfmtl.config.section`), and the modules
that implement a choice declare its values (`tfmtl.distribute.STRATEGIES`,
`tfmtl.tasks.TASK_TYPES`, `tfmtl.serving.index.INDEXES`, ...). Unknown keys,
wrong types and out-of-range values raise `ConfigError` naming the key.
Files and values are YAML 1.2 (`tfmtl.config.yaml_text`).

Example:

>>> from tfmtl.config import ExperimentConfig
>>> config = ExperimentConfig.from_dict({"train": {"epochs": 2}})
>>> config.train.epochs
2
>>> config.with_overrides(["model.embedding_dim=64"]).model.embedding_dim
64
>>> sorted(config.tasks)
['like', 'rating', 'retrieval']
>>> ExperimentConfig().with_overrides(["tasks.rating.weight=heavy"])
Traceback (most recent call last):
...
tfmtl.errors.ConfigError: tasks.rating.weight: expected a number, got 'heavy'
"""

from tfmtl.config.data import (ContentConfig, DataConfig, FeatureConfig, PropagationConfig,
                               SplitConfig, TextTuningConfig)
from tfmtl.config.evaluation import (EvaluateConfig, ExportConfig, PartitionedConfig, ScannConfig,
                                    TuneConfig)
from tfmtl.config.experiment import ExperimentConfig
from tfmtl.config.model import (EmbeddingBlock, LossWeightingConfig, ModelConfig,
                                MultiTaskConfig, SequenceConfig)
from tfmtl.config.section import check_name
from tfmtl.config.tasks import TaskConfig, default_tasks, history_length
from tfmtl.config.training import (DistillationConfig, EarlyStoppingConfig, TrainConfig,
                                   TransferConfig)
from tfmtl.config.yaml_text import load_yaml
from tfmtl.errors import ConfigError

__all__ = ["ConfigError", "ContentConfig", "DataConfig", "DistillationConfig", "EarlyStoppingConfig",
           "EmbeddingBlock", "EvaluateConfig", "ExperimentConfig", "ExportConfig", "FeatureConfig",
           "LossWeightingConfig", "ModelConfig", "MultiTaskConfig", "PropagationConfig",
           "PartitionedConfig", "ScannConfig", "SequenceConfig", "SplitConfig", "TaskConfig", "TextTuningConfig",
           "TrainConfig", "TransferConfig", "TuneConfig", "check_name", "default_tasks",
           "history_length", "load_yaml"]
