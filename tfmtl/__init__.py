"""tfmtl: multi-task, transfer-learning recommenders on TensorFlow Recommenders.

Import tfmtl before anything touches `tf.keras`: it binds `tf.keras` to
Keras 2 (tf_keras), which TFRS needs, and says clearly when it cannot.
"""

__version__ = "0.1.0"  # `tfmtl.runs` records it

import importlib

from tfmtl import _keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is used)

# The public names, imported on first use (PEP 562): `import tfmtl` and the
# `tfmtl` command's parsing (`tfmtl --help`) do not start TensorFlow.
_PUBLIC = {"ConfigError": "tfmtl.config", "ExperimentConfig": "tfmtl.config",
           "FeatureEncoder": "tfmtl.features", "FeatureVocabulary": "tfmtl.features",
           "MultiTaskModel": "tfmtl.model", "run": "tfmtl.experiment"}
_SUBMODULES = ("data", "evaluation", "runs", "serving", "training")  # and every other one


def __getattr__(name: str):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  try:
    return importlib.import_module(f"tfmtl.{name}")
  except ModuleNotFoundError as error:
    if error.name != f"tfmtl.{name}":
      raise
    raise AttributeError(f"module 'tfmtl' has no attribute {name!r}") from None


__all__ = sorted([*_PUBLIC, *_SUBMODULES])
