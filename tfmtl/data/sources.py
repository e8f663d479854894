"""The data a `DataConfig` names, from whichever source it names."""

from tfmtl.config import DataConfig
from tfmtl.data.files import load_files
from tfmtl.data.movielens import load_movielens_100k, load_tfds_movielens
from tfmtl.data.schema import InteractionData


def load_data(config: DataConfig) -> InteractionData:
  """Loads `config.source`: `movielens_100k`, `tfds` or `files`.

  Feature columns configured in `config` replace the source's defaults.
  """
  if config.source == "movielens_100k":
    data = load_movielens_100k(config.cache_dir)
  elif config.source == "tfds":
    data = load_tfds_movielens(config.tfds_name, config.cache_dir)
  else:
    return load_files(config.interactions, config.users, config.items,
                      config.format, config.columns, config.user_features,
                      config.item_features)
  if config.user_features or config.item_features:
    data = type(data).from_frames(
        data.interactions, data.users, data.items,
        config.user_features or data.user_features,
        config.item_features or data.item_features, name=data.name)
  return data
