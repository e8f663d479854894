"""The synthetic generator: power-law skew, planted tastes, streamed shards."""

import numpy as np
import pandas as pd
import pytest

from tfmtl import evaluation, training
from tfmtl.config import ExperimentConfig
from tfmtl.data.synthetic import data_config, write_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """200,000 interactions over 4 shards, in chunks of at most 30,000 rows."""
  return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 200_000,
                         num_users=5_000, num_items=2_000, num_tastes=10, shards=4,
                         chunk_size=30_000, seed=1)


def _interactions(folder) -> pd.DataFrame:
  return pd.concat([pd.read_parquet(path) for path in sorted(folder.glob("interactions-*"))])


def test_shards_hold_every_interaction_once_in_order(synthetic):
  shards = sorted(synthetic.glob("interactions-*.parquet"))
  assert [path.name for path in shards] == [f"interactions-{i:05d}-of-00004.parquet"
                                            for i in range(4)]
  assert [len(pd.read_parquet(path)) for path in shards] == [50_000] * 4  # even shards
  frame = _interactions(synthetic)
  assert len(frame) == 200_000
  assert sorted(frame["timestamp"]) == list(range(200_000))
  assert not list(synthetic.parent.glob(".*tmp"))


def test_item_popularity_and_user_activity_are_skewed(synthetic):
  frame = _interactions(synthetic)
  top_items = frame["item_id"].value_counts().iloc[:20].sum() / len(frame)  # top 1%
  top_users = frame["user_id"].value_counts().iloc[:50].sum() / len(frame)  # top 1%
  assert top_items > 0.25 and top_users > 0.05  # uniform: 0.01 each


def test_users_mostly_rate_items_of_their_taste_highly(synthetic):
  ratings = _interactions(synthetic)["rating"].to_numpy()
  liked = np.mean(ratings >= 4)
  assert liked == pytest.approx(0.8 + 0.2 / 10, abs=0.01)  # affinity + chance


def test_an_existing_folder_is_never_overwritten(synthetic):
  with pytest.raises(FileExistsError, match="never overwritten"):
    write_synthetic(synthetic, 10, 5, 5)


def test_a_model_learns_the_planted_tastes_and_beats_popularity(tmp_path):
  folder = write_synthetic(tmp_path / "data", 30_000, num_users=600, num_items=400,
                           num_tastes=5, shards=2, chunk_size=10_000)
  config = ExperimentConfig.from_dict({
      "name": "synthetic",
      "data": data_config(folder),
      "train": {"epochs": 3, "batch_size": 256, "run_dir": str(tmp_path / "run")},
      "model": {"embedding_dim": 16}})
  prepared = training.prepare(config)
  model = training.fit(config, prepared, verbose=0)
  learnt = evaluation.evaluate_model(model, prepared.data, prepared.split, [10])
  popular = evaluation.evaluate_popularity(prepared.data, prepared.split, [10])
  assert learnt["recall@10"] > 1.2 * popular["recall@10"]


def test_the_command_writes_shards_and_says_how_to_train_on_them(tmp_path, tfmtl_cli):
  result = tfmtl_cli("synthesize", "--output", "data", "--interactions", "5000", "--users", "100",
                     "--items", "50", "--shards", "3", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(list((tmp_path / "data").glob("interactions-*-of-00003.parquet"))) == 3
  assert "'data.interactions=data/interactions-*.parquet'" in result.stdout


@pytest.mark.parametrize("users", ["0", "abc"])
def test_a_size_that_is_not_positive_is_named(tmp_path, users, tfmtl_cli):
  result = tfmtl_cli("synthesize", "--output", "data", "--interactions", "100", "--users", users,
                     "--items", "50", cwd=tmp_path)
  assert result.returncode == 2
  assert f"argument --users: must be a positive integer, not {users!r}" in result.stderr
  assert not (tmp_path / "data").exists()


def test_an_output_below_a_file_is_named(tmp_path):
  (tmp_path / "afile").write_text("")
  with pytest.raises(NotADirectoryError, match=r"afile: not a folder, so .*afile/data cannot be "
                                                r"made"):
    write_synthetic(tmp_path / "afile" / "data", 100, num_users=10, num_items=10)
