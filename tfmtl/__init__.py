"""tfmtl: multi-task, transfer-learning recommenders on TensorFlow Recommenders.

Import tfmtl before anything touches `tf.keras`: it binds `tf.keras` to
Keras 2 (tf_keras), which TFRS needs, and says clearly when it cannot.
"""

__version__ = "0.1.0"  # before the imports: `tfmtl.runs` records it

from tfmtl import _keras  # noqa: F401  (must run before TensorFlow is used)
from tfmtl import data, evaluation, runs, serving, training
from tfmtl.config import ConfigError, ExperimentConfig
from tfmtl.experiment import run
from tfmtl.features import FeatureEncoder, FeatureVocabulary
from tfmtl.model import MultiTaskModel


__all__ = ["ConfigError", "ExperimentConfig", "FeatureEncoder",
           "FeatureVocabulary", "MultiTaskModel", "data", "evaluation", "run", "runs",
           "serving", "training"]
