"""Data: sources, validation, splits and tf.data pipelines."""

from tfmtl.data.files import load_files, read_table
from tfmtl.data.movielens import (fetch_movielens_100k, load_movielens_100k,
                                  load_tfds_movielens)
from tfmtl.data.pipeline import encode_examples, encode_interactions, make_dataset
from tfmtl.data.schema import DataError, InteractionData
from tfmtl.data.splits import (Split, per_user_split, random_split,
                               split_interactions, temporal_split)
from tfmtl.data.sources import load_data

__all__ = [
    "DataError", "InteractionData", "Split", "encode_examples", "encode_interactions",
    "fetch_movielens_100k", "load_data", "load_files", "load_movielens_100k",
    "load_tfds_movielens", "make_dataset", "per_user_split", "random_split",
    "read_table", "split_interactions", "temporal_split",
]
