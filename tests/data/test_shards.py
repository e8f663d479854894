"""TFRecord shards of encoded examples: written atomically, read back whole,
split by file across workers."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

from tfmtl.data import DataError
from tfmtl.data.shards import example_shards_dataset, write_example_shards

ROWS = 1000


@pytest.fixture(scope="module")
def encoded():
  rng = np.random.default_rng(0)
  return {"user_id": np.arange(ROWS, dtype=np.int64),
          "item_id": rng.integers(1, 50, ROWS).astype(np.int32),
          "rating": rng.uniform(1, 5, ROWS).astype(np.float32),
          "genres": rng.integers(0, 2, (ROWS, 7)).astype(np.float32),
          "history": rng.integers(0, 50, (ROWS, 3, 2)).astype(np.int64)}


@pytest.fixture(scope="module")
def folder(encoded, tmp_path_factory):
  return write_example_shards(encoded, tmp_path_factory.mktemp("input") / "shards",
                              num_shards=4, rows_per_record=16)


def _rows(dataset) -> dict:
  batches = list(dataset.as_numpy_iterator())
  return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def test_every_example_comes_back_once_with_its_dtype_and_shape(encoded, folder):
  rows = _rows(example_shards_dataset(folder, batch_size=128, shuffle=True, seed=1))
  order = np.argsort(rows["user_id"])
  np.testing.assert_array_equal(rows["user_id"][order], np.arange(ROWS))
  for name, values in encoded.items():
    assert rows[name].dtype == values.dtype and rows[name].shape == values.shape, name
    np.testing.assert_array_equal(rows[name][order], values, err_msg=name)


def test_batches_have_the_batch_size_and_epochs_are_reshuffled(folder):
  dataset = example_shards_dataset(folder, batch_size=128, shuffle=True, seed=1)
  sizes = [len(batch["user_id"]) for batch in dataset]
  assert sizes == [128] * 7 + [ROWS - 7 * 128]
  first, second = (_rows(dataset)["user_id"] for _ in range(2))
  assert not np.array_equal(first, second)
  fixed = example_shards_dataset(folder, batch_size=128, drop_remainder=True)
  assert [len(batch["user_id"]) for batch in fixed] == [128] * 7


def test_the_rows_are_spread_over_the_files_at_random(folder):
  per_file = [_rows(example_shards_dataset(folder, 1000, input_context=tf.distribute.InputContext(
      num_input_pipelines=4, input_pipeline_id=index)))["user_id"] for index in range(4)]
  assert [len(ids) for ids in per_file] == [250] * 4
  assert np.ptp(per_file[0]) > ROWS / 2  # not a contiguous range of the input


def test_workers_read_disjoint_files_that_cover_every_example(folder):
  dataset = example_shards_dataset(folder, batch_size=100)
  workers = [_rows(_AutoShardDataset(dataset, 2, index))["user_id"] for index in range(2)]
  assert not set(workers[0]) & set(workers[1])
  assert sorted(np.concatenate(workers)) == list(range(ROWS))
  # by file: worker 0 reads files 0 and 2, as a parameter-server worker would
  contexts = [tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=index)
              for index in (0, 2)]
  expected = np.concatenate([_rows(example_shards_dataset(folder, 1000, input_context=context))
                             ["user_id"] for context in contexts])
  assert sorted(workers[0]) == sorted(expected)


def test_rewriting_replaces_the_folder_and_leaves_no_staging(encoded, tmp_path):
  folder = write_example_shards(encoded, tmp_path / "shards", num_shards=3)
  folder = write_example_shards({k: v[:10] for k, v in encoded.items()}, folder, num_shards=2)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
  assert len(list(folder.glob("*.tfrecord"))) == 2
  assert len(_rows(example_shards_dataset(folder, 4))["user_id"]) == 10


def test_a_folder_without_a_spec_is_a_data_error_naming_it(tmp_path):
  with pytest.raises(DataError, match=f"{tmp_path}: not a folder of example shards"):
    example_shards_dataset(tmp_path, 4)
