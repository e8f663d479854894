"""Sharded TFRecord files of encoded examples, read back as a tf.data stream.

`write_example_shards` writes encoded examples (`encode_examples`' arrays) in
a seeded random order into `examples-NNNNN-of-NNNNN.tfrecord` files and a
`spec.json`. Each record is a `tf.train.Example` holding a block of
`rows_per_record` consecutive rows, one flat list per feature, so reading
costs one parse per block, not per row. The folder is written under a
temporary name and renamed when complete.

`example_shards_dataset` reads them back: the files in a fresh order every
epoch, interleaved, blocks shuffled in a buffer, then re-cut into batches.
Across workers, the files are split, not the rows: under
MultiWorkerMirroredStrategy `tf.distribute` gives each worker every n-th
file (auto-shard policy FILE), and a ParameterServerStrategy worker reads
every n-th file of its input context. The dataset's graph holds file
names, not data, so it also suits the tf.data service.

Example:

>>> import tempfile
>>> import numpy as np
>>> encoded = {"user_id": np.arange(10), "rating": np.linspace(1, 5, 10, dtype=np.float32)}
>>> folder = write_example_shards(encoded, tempfile.mkdtemp() + "/input", num_shards=2,
...                               rows_per_record=4)
>>> sorted(path.name for path in folder.iterdir())
['examples-00000-of-00002.tfrecord', 'examples-00001-of-00002.tfrecord', 'spec.json']
>>> batches = list(example_shards_dataset(folder, batch_size=4))
>>> [len(batch["user_id"]) for batch in batches]
[4, 4, 2]
>>> sorted(np.concatenate([batch["user_id"].numpy() for batch in batches]).tolist())
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfmtl import atomic
from tfmtl.data.schema import DataError

SPEC = "spec.json"
_SHUFFLE_RECORDS = 256  # blocks in the shuffle buffer


def write_example_shards(encoded: dict[str, np.ndarray], folder: str | Path,
                         num_shards: int = 8, rows_per_record: int = 64,
                         seed: int = 0) -> Path:
  """Writes `encoded` (arrays of equal length) to `folder`, replacing it.

  Args:
    encoded: feature name -> numeric array, one row per example.
    folder: the shards' folder.
    num_shards: files; at least the number of workers that will read them.
    rows_per_record: rows per `tf.train.Example` record.
    seed: the order the rows are written in.
  """
  if num_shards < 1 or rows_per_record < 1:
    raise ValueError("write_example_shards: num_shards and rows_per_record must be positive")
  folder = Path(folder)
  size = len(next(iter(encoded.values())))
  order = np.random.default_rng(seed).permutation(size)
  bounds = np.linspace(0, size, num_shards + 1).astype(int)

  def write(staging: Path) -> None:
    for shard in range(num_shards):
      path = staging / f"examples-{shard:05d}-of-{num_shards:05d}.tfrecord"
      with tf.io.TFRecordWriter(str(path)) as writer:
        for start in range(bounds[shard], bounds[shard + 1], rows_per_record):
          rows = order[start:min(start + rows_per_record, bounds[shard + 1])]
          writer.write(_block({name: values[rows] for name, values in encoded.items()}))
    spec = {"num_examples": int(size), "rows_per_record": rows_per_record,
            "features": {name: {"dtype": values.dtype.name, "shape": list(values.shape[1:])}
                         for name, values in encoded.items()}}
    (staging / SPEC).write_text(json.dumps(spec, indent=2))
  atomic.write_folder(folder, write, replaceable=lambda old: (old / SPEC).is_file())
  return folder


def _block(columns: dict[str, np.ndarray]) -> bytes:
  """One record: each feature's rows as one flat int64 or float list."""
  feature = {}
  for name, values in columns.items():
    flat = values.ravel()
    feature[name] = (tf.train.Feature(float_list=tf.train.FloatList(value=flat))
                     if np.issubdtype(values.dtype, np.floating) else
                     tf.train.Feature(int64_list=tf.train.Int64List(value=flat)))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def read_spec(folder: str | Path) -> dict:
  """The shards' `spec.json`; `DataError` naming the folder if there is none."""
  path = Path(folder) / SPEC
  if not path.is_file():
    raise DataError(f"{folder}: not a folder of example shards ({SPEC} is missing)")
  return json.loads(path.read_text())


def example_shards_dataset(folder: str | Path, batch_size: int, shuffle: bool = False,
                           seed: Optional[int] = None, drop_remainder: bool = False,
                           input_context: Optional[tf.distribute.InputContext] = None,
                           shard_by_file: bool = True) -> tf.data.Dataset:
  """Batches of the examples in `folder` (`write_example_shards`).

  Args:
    folder: the shards' folder.
    batch_size: examples per batch.
    shuffle: reshuffle files and blocks every epoch.
    seed: shuffling seed.
    drop_remainder: drop a last, smaller batch (TPUs need fixed shapes).
    input_context: a ParameterServerStrategy worker's input context; the
      worker then reads every n-th file.
    shard_by_file: set the auto-shard policy FILE (False leaves it to
      whoever splits the work, e.g. the tf.data service).
  """
  spec = read_spec(folder)
  files = sorted(str(path) for path in Path(folder).glob("examples-*.tfrecord"))
  if not files:
    raise DataError(f"{folder}: no examples-*.tfrecord files")
  features = {name: tf.io.FixedLenSequenceFeature(
                  feature["shape"], _wire_dtype(feature["dtype"]), allow_missing=True)
              for name, feature in spec["features"].items()}

  def parse(record):
    block = tf.io.parse_single_example(record, features)
    return {name: tf.cast(values, spec["features"][name]["dtype"])
            for name, values in block.items()}

  names = tf.data.Dataset.from_tensor_slices(files)
  if input_context is not None:
    names = names.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if shuffle:
    names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  records = names.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shuffle:
    records = records.shuffle(_SHUFFLE_RECORDS, seed=seed, reshuffle_each_iteration=True)
  blocks = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = blocks.rebatch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
  if not shard_by_file:
    return batches
  options = tf.data.Options()  # tf.distribute gives each worker its own files
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
  return batches.with_options(options)


def _wire_dtype(dtype: str) -> tf.DType:
  return tf.float32 if np.issubdtype(np.dtype(dtype), np.floating) else tf.int64
