"""The data a `DataConfig` names, from whichever source it names, and the
source domain that sample-based transfer mixes into training.

Example (sample-based transfer: a source domain's interactions join the
target's training rows at half weight; the feature tables are joined):

>>> import pandas as pd
>>> from tfmtl.data import InteractionData
>>> from tfmtl.data.sources import mix_source
>>> target = InteractionData.from_frames(pd.DataFrame(
...     {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "rating": [4, 5]}))
>>> source = InteractionData.from_frames(pd.DataFrame(
...     {"user_id": ["u1", "u9"], "item_id": ["s1", "s2"], "rating": [3, 1],
...      "sample_weight": [0.5, 0.5]}))
>>> data, train = mix_source(target, target.interactions, source)
>>> train["sample_weight"].tolist(), sorted(data.items["item_id"])
([1.0, 1.0, 0.5, 0.5], ['i1', 'i2', 's1', 's2'])
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pandas as pd

from tfmtl.config import DataConfig
from tfmtl.data.files import load_files
from tfmtl.data.movielens import load_movielens_100k, load_tfds_movielens
from tfmtl.data.schema import (ITEM_ID, SAMPLE_WEIGHT, USER_ID, DataError, InteractionData,
                               ids_in)


SOURCES = ("movielens_100k", "tfds", "files")  # `data.source`


def load_data(config: DataConfig) -> InteractionData:
  """Loads `config.source`: `movielens_100k`, `tfds` or `files`.

  Feature columns configured in `config` replace the source's defaults.
  """
  if config.source == "movielens_100k":
    data = load_movielens_100k(config.cache_dir)
  elif config.source == "tfds":
    data = load_tfds_movielens(config.tfds_name, config.cache_dir)
  else:
    given = (config.train, config.validation, config.test)
    return load_files(config.interactions or given, config.users, config.items,
                      config.format, config.columns, config.user_features,
                      config.item_features, config.domain_column)
  if config.user_features or config.item_features or config.domain_column:
    data = type(data).from_frames(
        data.interactions, data.users, data.items,
        config.user_features or data.user_features,
        config.item_features or data.item_features, sources=data.sources,
        name=data.name, domain_column=config.domain_column)
  return data


def load_source(config: DataConfig, target: InteractionData, weight: float) -> InteractionData:
  """The source domain (`transfer.source`), read with the target's feature
  columns unless `config` names its own, each interaction weighted `weight`
  (times its own `sample_weight`). Errors name `transfer.source`."""
  config = dataclasses.replace(config,
                               user_features=config.user_features or target.user_features,
                               item_features=config.item_features or target.item_features)
  try:
    source = load_data(config)
  except DataError as error:
    raise DataError(f"transfer.source: {error}") from None
  interactions = source.interactions.copy()
  interactions[SAMPLE_WEIGHT] = weight * interactions.get(SAMPLE_WEIGHT, 1.0)
  return dataclasses.replace(source, interactions=interactions, name=f"source {source.name}")


BALANCES = ("rows", "domains")  # `transfer.balance`


def mix_source(target: InteractionData, train: pd.DataFrame,
               source: Optional[InteractionData], balance: str = "rows"
               ) -> tuple[InteractionData, pd.DataFrame]:
  """The training examples: the target's `train` rows (weight 1 unless they
  carry their own) and every source interaction, over feature tables joined
  (for an id in both, the target's row wins). Without a source, as given.

  `balance`: `rows` keeps each row's weight, so both domains share one mean
  and the larger one dominates it; `domains` scales each domain's weights by
  (all rows / its rows), so that a batch's mean loss estimates
  `L_target + L_source`, each the mean weighted loss over its own rows (with
  source weights `lambda`: `L_target + lambda * L_source`), whatever the
  domains' sizes.

  The source must have the target's label columns; its other columns are
  dropped."""
  if source is None:
    return target, train
  missing = [c for c in target.label_columns if c not in source.interactions]
  if missing:
    raise DataError(f"transfer.source: the interactions lack the label column(s) "
                    f"{missing} that the target's have")
  train, extra = _weighted(train), _weighted(source.interactions)
  if balance == "domains":
    total = len(train) + len(extra)
    train[SAMPLE_WEIGHT] *= total / len(train)
    extra[SAMPLE_WEIGHT] *= total / len(extra)
  rows = pd.concat([train, extra[train.columns.intersection(extra.columns)]],
                   ignore_index=True)
  return dataclasses.replace(target, interactions=rows,
                             users=_joined(target.users, source.users, USER_ID),
                             items=_joined(target.items, source.items, ITEM_ID)), rows


def _weighted(interactions: pd.DataFrame) -> pd.DataFrame:
  return interactions.assign(**{SAMPLE_WEIGHT: interactions.get(SAMPLE_WEIGHT, 1.0)})


def _joined(table: pd.DataFrame, more: pd.DataFrame, id_column: str) -> pd.DataFrame:
  """`table` plus the rows of `more` whose ids it lacks."""
  return pd.concat([table, more[~ids_in(more[id_column], table[id_column])]],
                   ignore_index=True)
