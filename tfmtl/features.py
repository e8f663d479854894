"""Feature vocabularies learnt from training data, and the layer that applies them.

`FeatureVocabulary.build(data, train)` learns, from the training
interactions only, the user and item id vocabularies (most frequent first),
each categorical feature's tokens, each bucketized feature's quantile
boundaries, and the training frequency of every item (for the sampling-bias
correction and the popularity baseline). It saves to and loads from JSON.

`FeatureEncoder` (a Keras layer built from a vocabulary) turns raw features
into integer indices. Index 0 is always the out-of-vocabulary / missing
bucket, so ids and values never seen in training still encode:

- ids and `categorical` features: int64 index;
- `multi_categorical`: float32 multi-hot over the tokens;
- `bucketized`: int64 bucket, 0 for a missing value;
- `history` (when `history_length` > 0): `|`-joined item ids, most recent
  first -> int64 [batch, history_length] item indices, 0-padded;
- `domain` (when the training interactions have domains): int64 index.

Example:

>>> import pandas as pd
>>> from tfmtl.data import InteractionData
>>> from tfmtl.features import FeatureVocabulary
>>> data = InteractionData.from_frames(
...     pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i1"]}))
>>> vocabulary = FeatureVocabulary.build(data, data.interactions)
>>> vocabulary.item_ids, vocabulary.item_counts
(['i1', 'i2'], [2, 1])
>>> encoder = vocabulary.encoder()
>>> encoder({"user_id": ["u2", "new"], "item_id": ["i2", "i1"]})["user_id"].numpy()
array([2, 0])
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.config import FeatureConfig
from tfmtl.data.schema import (DOMAIN, HISTORY, HISTORY_SEPARATOR, ITEM_ID, USER_ID,
                               InteractionData, ids_in)

# what `FeatureConfig.type` may be: one token, tokens, a number cut into
# buckets, a vector of floats
FEATURE_TYPES = ("categorical", "multi_categorical", "bucketized", "vector")


@dataclasses.dataclass
class FeatureVocabulary:
  """Everything learnt from training data that encoding needs (see module doc)."""
  user_ids: list[str]
  item_ids: list[str]
  item_counts: list[int]
  user_features: dict[str, FeatureConfig]
  item_features: dict[str, FeatureConfig]
  tokens: dict[str, list[str]]
  boundaries: dict[str, list[float]]
  history_length: int = 0
  domains: list[str] = dataclasses.field(default_factory=list)  # most frequent first

  @classmethod
  def build(cls, data: InteractionData, train: pd.DataFrame,
            history_length: int = 0) -> "FeatureVocabulary":
    """Learns vocabularies from `train`, a subset of `data.interactions`.

    `history_length` > 0 also encodes the `history` feature (see
    `tfmtl.data.history`) as that many item indices. The `domain` values
    of `train` (if it has them) become `domains`.
    """
    user_counts = train[USER_ID].value_counts(sort=True)
    item_counts = train[ITEM_ID].value_counts(sort=True)
    tokens, boundaries = {}, {}
    for table, id_column, specs, counts in (
        (data.users, USER_ID, data.user_features, user_counts),
        (data.items, ITEM_ID, data.item_features, item_counts)):
      seen = table[ids_in(table[id_column], counts.index)]  # the distinct ids: fast
      for name, spec in specs.items():
        values = seen[name]
        if spec.type == "vector":
          continue  # read as is
        if spec.type == "bucketized":
          quantiles = np.linspace(0, 1, spec.num_buckets + 1)[1:-1]
          finite = values.to_numpy(dtype=np.float64)
          finite = finite[np.isfinite(finite)]
          cuts = np.unique(np.quantile(finite, quantiles)) if len(finite) else [0.0]
          boundaries[name] = [float(c) for c in cuts]
        else:
          token_counts = _tokens(values, spec).value_counts(sort=True)
          tokens[name] = list(token_counts.index) or ["<none>"]
    return cls(user_ids=list(user_counts.index), item_ids=list(item_counts.index),
               item_counts=[int(c) for c in item_counts],
               user_features=dict(data.user_features),
               item_features=dict(data.item_features),
               tokens=tokens, boundaries=boundaries, history_length=history_length,
               domains=(list(train[DOMAIN].value_counts(sort=True).index)
                        if DOMAIN in train else []))

  def size(self, feature: str) -> int:
    """Number of indices of an encoded feature, the OOV index 0 included."""
    if feature == USER_ID:
      return len(self.user_ids) + 1
    if feature == ITEM_ID:
      return len(self.item_ids) + 1
    if feature == DOMAIN:
      return len(self.domains) + 1
    if feature in self.boundaries:
      return len(self.boundaries[feature]) + 2
    return len(self.tokens[feature]) + 1

  def value_names(self, feature: str) -> list[str]:
    """What each index of an encoded categorical, multi_categorical or
    bucketized feature stands for: `(missing)` for index 0, then the
    tokens, or the buckets as intervals.

    >>> FeatureVocabulary([], [], [], {}, {}, {}, {"year": [1990.0, 2000.0]}).value_names("year")
    ['(missing)', '< 1990', '[1990, 2000)', '>= 2000']
    """
    if feature in self.boundaries:
      cuts = [f"{cut:g}" for cut in self.boundaries[feature]]
      inner = ["[%s, %s)" % pair for pair in zip(cuts, cuts[1:])]
      return ["(missing)", f"< {cuts[0]}", *inner, f">= {cuts[-1]}"]
    return ["(missing)", *self.tokens[feature]]

  def item_probabilities(self) -> np.ndarray:
    """Each item index's share of training interactions; OOV counts as once."""
    counts = np.array([1, *self.item_counts], dtype=np.float64)
    return (counts / counts.sum()).astype(np.float32)

  def encoder(self) -> "FeatureEncoder":
    return FeatureEncoder(self)

  def save(self, path: str | Path) -> None:
    values = dataclasses.asdict(self)
    Path(path).write_text(json.dumps(values))

  @classmethod
  def load(cls, path: str | Path) -> "FeatureVocabulary":
    try:
      values = json.loads(Path(path).read_text())
      for side in ("user_features", "item_features"):
        values[side] = {k: FeatureConfig(**v) for k, v in values[side].items()}
      return cls(**values)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
      raise ValueError(f"{path}: not a readable vocabulary ({type(error).__name__}: "
                       f"{error}); retrain the run with `tfmtl train`") from None


def _tokens(values: pd.Series, spec: FeatureConfig) -> pd.Series:
  """Every token of a categorical feature's values, in order; none empty."""
  if spec.type == "multi_categorical":
    values = values.str.split(spec.separator, regex=False).explode()
  elif spec.prefix:
    values = values.str.slice(0, spec.prefix)
  return values[values != ""]


class FeatureEncoder(keras.layers.Layer):
  """Maps raw feature tensors to indices with a `FeatureVocabulary`.

  Call it on a dict of raw tensors (strings for ids and categorical
  features, float32 for bucketized ones); keys it does not know pass
  through unchanged, so labels travel with the features.
  """

  def __init__(self, vocabulary: FeatureVocabulary, **kwargs):
    super().__init__(**kwargs)
    self.vocabulary = vocabulary
    self.specs = {**vocabulary.user_features, **vocabulary.item_features}
    # Vocabularies go in as arrays: a layer tracks a list attribute's every
    # element, and Keras walks them each time it lists the model's layers
    # or variables (0.7 s a time with 1M items).
    self.lookups = {
        USER_ID: keras.layers.StringLookup(vocabulary=np.asarray(vocabulary.user_ids, object)),
        ITEM_ID: keras.layers.StringLookup(vocabulary=np.asarray(vocabulary.item_ids, object)),
    }
    if vocabulary.domains:
      self.lookups[DOMAIN] = keras.layers.StringLookup(
          vocabulary=np.asarray(vocabulary.domains, object))
    for name, spec in self.specs.items():
      if spec.type == "vector":
        continue  # passes through
      if spec.type == "bucketized":
        self.lookups[name] = keras.layers.Discretization(
            bin_boundaries=vocabulary.boundaries[name])
      else:
        self.lookups[name] = keras.layers.StringLookup(
            vocabulary=np.asarray(vocabulary.tokens[name], object),
            output_mode="multi_hot" if spec.type == "multi_categorical" else "int")

  @property
  def user_inputs(self) -> list[str]:
    """The raw features that describe a user (the query side)."""
    return [USER_ID, *self.vocabulary.user_features,
            *([HISTORY] if self.vocabulary.history_length else [])]

  @property
  def raw_signature(self) -> dict[str, tf.TensorSpec]:
    """Dtypes of the raw features, by name."""
    def spec(name):
      if name in self.specs and self.specs[name].type == "vector":
        return tf.TensorSpec([None, self.specs[name].dim], tf.float32, name=name)
      return tf.TensorSpec([None], tf.float32 if name in self.vocabulary.boundaries
                           else tf.string, name=name)
    return {name: spec(name)
            for name in (*self.user_inputs, ITEM_ID, *self.vocabulary.item_features,
                         *([DOMAIN] if self.vocabulary.domains else []))}

  def missing(self, batch_size: int = 1) -> dict[str, tf.Tensor]:
    """Raw features with every value missing (OOV; zero vectors)."""
    return {name: (tf.zeros([batch_size, *spec.shape[1:]]) if spec.shape.rank == 2 else
                   tf.fill([batch_size], float("nan") if spec.dtype == tf.float32 else ""))
            for name, spec in self.raw_signature.items()}

  def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    encoded = dict(features)
    if self.vocabulary.history_length and HISTORY in features:
      items = tf.strings.split(tf.convert_to_tensor(features[HISTORY]), HISTORY_SEPARATOR)
      items = tf.ragged.boolean_mask(items, tf.strings.length(items) > 0)
      encoded[HISTORY] = self.lookups[ITEM_ID](items).to_tensor(
          0, shape=[None, self.vocabulary.history_length])
    for name, lookup in self.lookups.items():
      if name not in features:
        continue
      values = tf.convert_to_tensor(features[name])
      spec = self.specs.get(name)
      if spec is None or spec.type == "categorical":
        if spec is not None and spec.prefix:
          values = tf.strings.substr(values, 0, spec.prefix)
        encoded[name] = lookup(values)
      elif spec.type == "multi_categorical":
        tokens = tf.strings.split(values, spec.separator)
        tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
        encoded[name] = lookup(tokens)
      else:  # bucketized: 0 is missing, buckets are 1..n
        values = tf.cast(values, tf.float32)
        encoded[name] = tf.where(tf.math.is_nan(values), tf.constant(0, tf.int64),
                                 tf.cast(lookup(values), tf.int64) + 1)
    return encoded
