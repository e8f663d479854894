"""Task types: one class per type, each owning all it knows (`Task`).

| type | reads | loss | Keras metrics | exact metrics |
|---|---|---|---|---|
| `retrieval` | both towers | in-batch softmax | `factorized_top_k/...` | `tfmtl.evaluation` |
| `regression` | the pair's logit | squared error | `_rmse`, `_mae` | `_rmse`, `_mae` |
| `binary` | the pair's logit | cross-entropy | `_binned_auc`, `_accuracy` | `_auc` |
| `implicit` | the pair's logit | cross-entropy vs sampled items | `_binned_auc` | |
| `classification` | one tower | softmax or sigmoids | `_accuracy` or `_binned_auc` | |
| `reconstruction` | the query tower | cross-entropy to the history's profile | | |
| `autoencoder` | the candidate tower | softmax or sigmoids to a feature it reads | `_accuracy` or `_binned_auc` | |

A new type is one module with one `Task` subclass, listed in `TASK_TYPES`.

Example:

>>> from tfmtl.tasks import task_type
>>> task_type("binary").exact_metrics, task_type("binary").reads_pair
(('auc',), True)
"""

from __future__ import annotations

from tfmtl.errors import ConfigError
from tfmtl.tasks.autoencoder import Autoencoder
from tfmtl.tasks.base import Task, TaskInputs
from tfmtl.tasks.binary import Binary, exact_auc
from tfmtl.tasks.classification import Classification
from tfmtl.tasks.implicit import Implicit
from tfmtl.tasks.in_batch_softmax import InBatchSoftmax
from tfmtl.tasks.reconstruction import Reconstruction
from tfmtl.tasks.regression import Regression
from tfmtl.tasks.retrieval import CatalogueTopK, Retrieval

TASK_TYPES: dict[str, type[Task]] = {
    task.type: task
    for task in (Retrieval, Regression, Binary, Implicit, Classification, Reconstruction,
                 Autoencoder)}


def task_type(name: str) -> type[Task]:
  """The class of task type `name`; `ConfigError` naming the types if unknown."""
  if name not in TASK_TYPES:
    raise ConfigError(f"type: unknown value {name!r}; expected one of {', '.join(TASK_TYPES)}")
  return TASK_TYPES[name]


def make_task(name: str, config, model) -> Task:
  """The task `name` of `model` (being built) from its `TaskConfig`."""
  return task_type(config.type)(name, config, model)


__all__ = ["TASK_TYPES", "Binary", "CatalogueTopK", "Classification", "Implicit",
           "InBatchSoftmax", "Reconstruction", "Regression", "Retrieval", "Task", "TaskInputs",
           "exact_auc", "make_task", "task_type"]
