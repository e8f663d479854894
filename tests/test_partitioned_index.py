"""`export.index: partitioned`: k-means partitions searched with standard
TensorFlow ops, exact when every partition is probed."""

import numpy as np
import pytest
import tensorflow as tf

import tfmtl
from tfmtl.config import PartitionedConfig
from tfmtl.serving.index import BruteForceIndex, PartitionedIndex, nearest_centroids


@pytest.fixture(scope="module")
def clustered():
  """5,000 unit vectors around 50 centres, and 64 queries near some of them."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(50, 16))
  items = centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 16))
  items = (items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32)
  queries = items[:64] + np.float32(0.05) * rng.normal(size=(64, 16)).astype(np.float32)
  return items, tf.constant(queries)


def _exact(items, queries, n, excluded):
  return BruteForceIndex(tf.constant(items.T)).top(queries, n, excluded)


def test_probing_every_partition_is_brute_force(clustered):
  items, queries = clustered
  excluded = tf.constant(np.tile([[0, 1, -1]], (64, 1)), tf.int32)
  index = PartitionedIndex(items, PartitionedConfig(partitions=40, nprobe=40))
  scores, columns = index.top(queries, 100, excluded)
  exact_scores, exact_columns = _exact(items, queries, 100, excluded)
  np.testing.assert_array_equal(columns.numpy(), exact_columns.numpy())
  np.testing.assert_allclose(scores.numpy(), exact_scores.numpy(), atol=1e-5)


def test_a_few_partitions_find_the_exact_top_items_and_never_an_excluded_one(clustered):
  items, queries = clustered
  _, exact = _exact(items, queries, 100, tf.fill([64, 1], -1))
  excluded = exact[:, :5]  # each query's five best: gone
  index = PartitionedIndex(items, PartitionedConfig(partitions=70, nprobe=4))
  _, columns = index.top(queries, 100, excluded)
  assert not any(set(got) & set(gone) for got, gone in zip(columns.numpy(), excluded.numpy()))
  recall = np.mean([len(set(got) & set(want)) / 95
                    for got, want in zip(columns.numpy(), exact.numpy()[:, 5:])])
  assert recall >= 0.95, recall
  again = PartitionedIndex(items, PartitionedConfig(partitions=70, nprobe=4))  # same seed
  np.testing.assert_array_equal(again.item_columns.numpy(), index.item_columns.numpy())


def test_a_coarse_level_finds_nearly_every_items_nearest_centroid(clustered):
  """Up to `coarse_above` centroids each item gets its nearest; beyond, it
  searches the centroids of its nearest groups only, and most items still
  find their nearest."""
  items, _ = clustered
  centroids = items[np.random.default_rng(1).choice(len(items), 400, replace=False)]
  squared = ((items[:, None, :] - centroids[None]) ** 2).sum(axis=2)  # [items, centroids]
  exact = nearest_centroids(items, centroids)
  np.testing.assert_array_equal(exact, squared.argmin(axis=1))
  coarse = nearest_centroids(items, centroids, coarse_above=0)
  assert 0.99 <= (coarse == exact).mean() < 1.0  # 400 centroids, 20 groups, 4 searched


def test_new_items_join_their_nearest_partition_and_are_found(clustered):
  items, queries = clustered
  first = PartitionedIndex(items[:4000], PartitionedConfig(partitions=60, nprobe=4))
  grown = PartitionedIndex(items, PartitionedConfig(nprobe=4), first.centroids.numpy())
  np.testing.assert_array_equal(grown.centroids.numpy(), first.centroids.numpy())  # kept
  new = tf.constant(items[4000:4064])  # each new item's own direction finds it first
  _, columns = grown.top(new, 1, tf.fill([64, 0], -1))
  assert (columns.numpy()[:, 0] == np.arange(4000, 4064)).mean() >= 0.95


def test_fewer_probed_items_than_asked_leave_empty_places(clustered):
  items, queries = clustered
  index = PartitionedIndex(items[:30], PartitionedConfig(partitions=10, nprobe=1))
  scores, columns = index.top(queries[:2], 20, tf.fill([2, 0], -1))
  found = columns.numpy() >= 0
  assert not found.all() and found[:, 0].all()  # one partition: a few items, then nothing
  assert (scores.numpy()[~found] <= -1e30).all()


def test_a_partition_whose_farthest_item_scores_best_is_probed_first():
  """The query (1, 0) scores partition 0's centroid 0.5 and partition 1's
  0.0, but partition 1 holds (0.9, 1.2), its item farthest from the
  centroid: with one partition probed, that item is the answer."""
  items = np.array([[0.5, 0.0], [0.5, 0.1], [0.0, 1.0], [0.0, 1.0], [0.9, 1.2]], np.float32)
  centroids = np.array([[0.5, 0.0], [0.0, 1.0]], np.float32)
  index = PartitionedIndex(items, PartitionedConfig(nprobe=1), centroids)
  np.testing.assert_array_equal(index.farthest_items.numpy(), items[[1, 4]])
  scores, columns = index.top(tf.constant([[1.0, 0.0]]), 1, tf.fill([1, 0], -1))
  assert columns.numpy().tolist() == [[4]] and scores.numpy()[0, 0] == pytest.approx(0.9)


def test_a_spread_out_partition_is_probed_before_a_tight_one_whose_centroid_scores_higher():
  """For the query (1, 0), partition 0 is 20 items at (0.6, 2), partition 1
  19 items on a circle of radius 0.4 around (0.3, -2) and one at (0.3, -2.9):
  its spread (RMS distance 0.44 times sqrt(2 ln 20 / 2)) puts its estimate
  at 1.06, above 0.6, so one probed partition finds (0.7, -2)."""
  angles = np.linspace(0, 2 * np.pi, 19, endpoint=False)
  circle = np.stack([0.3 + 0.4 * np.cos(angles), -2 + 0.4 * np.sin(angles)], axis=1)
  items = np.concatenate([np.tile([[0.6, 2.0]], (20, 1)), circle, [[0.3, -2.9]]]
                         ).astype(np.float32)
  centroids = np.array([[0.6, 2.0], [0.3, -2.0]], np.float32)
  index = PartitionedIndex(items, PartitionedConfig(nprobe=1), centroids)
  rms = np.sqrt((19 * 0.4 ** 2 + 0.9 ** 2) / 20)
  np.testing.assert_allclose(index.partition_spreads.numpy(), [0.0, rms * np.sqrt(np.log(20))],
                             rtol=1e-5)
  scores, columns = index.top(tf.constant([[1.0, 0.0]]), 1, tf.fill([1, 0], -1))
  assert columns.numpy().tolist() == [[20]] and scores.numpy()[0, 0] == pytest.approx(0.7)


@pytest.mark.parametrize("quantization", ["bfloat16", "int8"])
def test_a_quantized_index_rescores_exactly(clustered, quantization):
  """Every partition probed and every item re-scored, a quantized index
  answers as brute force, with float32 scores; at a few partitions and the
  default re-score depth it keeps its recall."""
  items, queries = clustered
  excluded = tf.constant(np.tile([[3, -1]], (64, 1)), tf.int32)
  exact_scores, exact_columns = _exact(items, queries, 100, excluded)
  every = PartitionedIndex(items, PartitionedConfig(partitions=40, nprobe=40, rescore=5000,
                                                    quantization=quantization))
  assert every.item_vectors.dtype == getattr(tf, quantization)
  scores, columns = every.top(queries, 100, excluded)
  np.testing.assert_array_equal(columns.numpy(), exact_columns.numpy())
  np.testing.assert_allclose(scores.numpy(), exact_scores.numpy(), atol=1e-5)
  few = PartitionedIndex(items, PartitionedConfig(partitions=70, nprobe=4,
                                                  quantization=quantization))
  _, columns = few.top(queries, 100, excluded)
  recall = np.mean([len(set(got) & set(want)) / 100
                    for got, want in zip(columns.numpy(), exact_columns.numpy())])
  assert recall >= 0.95, recall


def test_partitions_are_stored_in_blocks_of_the_mean_size(clustered):
  """A large partition takes several blocks, so padding is less than a
  block per partition, and a partition's blocks are probed together."""
  items, _ = clustered
  index = PartitionedIndex(items[:1000], PartitionedConfig(partitions=20, nprobe=2))
  blocks, size = index.item_columns.shape
  assert size == 50 and blocks < 2 * 20
  partitions = index.block_partitions.numpy()
  assert (np.diff(partitions) >= 0).all() and len(set(partitions)) == 20
  assert sorted(index.item_columns.numpy()[index.item_columns.numpy() >= 0]) == list(range(1000))
  assert index.probed_blocks == int(np.ceil(2 * blocks / 20))


@pytest.mark.slow
def test_an_export_answers_as_brute_force_keeps_its_partitions_and_validates(tiny_data, tmp_path):
  """Probing every partition, the export answers `retrieve` as brute force
  does; `add-items` keeps its partitions, and `validate` (a process without
  tfmtl, so standard ops only) passes on the grown export."""
  from tfmtl import runs, training
  from tfmtl.config import ExperimentConfig
  from tfmtl.data import Split
  from tfmtl.serving import add_items
  from tfmtl.serving.export import export_configured
  from tfmtl.serving.index import saved_centroids
  from tfmtl.serving.validate import validate_export
  data = tiny_data
  config = ExperimentConfig().with_overrides([
      "name=tiny", "model.embedding_dim=16", "train.epochs=1", "train.batch_size=64",
      "train.validate_every=0", "train.log_dir=''", "export.top_k=5", "export.index=partitioned",
      "export.partitioned={partitions: 6, nprobe: 6}", f"export.base_path={tmp_path}"])
  empty = data.interactions.iloc[:0]
  prepared = training.Prepared(data, Split(data.interactions, empty, empty),
                               tfmtl.FeatureVocabulary.build(data, data.interactions))
  model = training.fit(config, prepared, verbose=0)
  run = runs.save_run(tmp_path / "run", config, prepared, model)
  partitioned = export_configured(model, config)
  users = {"user_id": ["u1", "u7"], "taste": ["t1", "t2"], "age": [25.0, 61.0]}
  raw = {name: np.array(values, np.float32 if name == "age" else object)
         for name, values in users.items()}
  answer = tf.saved_model.load(str(partitioned)).signatures["retrieve"](
      k=tf.constant([5, 5]), exclude_item_ids=tf.constant([["i1"], [""]]),
      **{name: tf.constant(value) for name, value in raw.items()})
  excluded = tf.constant([[list(model.catalogue_item_ids).index("i1")], [-1]], tf.int32)
  scores, columns = _exact(model.catalogue_embeddings().numpy(),
                           model.query_tower(model.encoder(raw)), 5, excluded)
  assert (answer["item_ids"].numpy().astype(str).tolist()
          == model.catalogue_item_ids[columns.numpy()].tolist())
  np.testing.assert_allclose(answer["scores"].numpy(), scores.numpy(), atol=1e-5)

  grown = add_items(run, data.items.iloc[:1].assign(item_id="n1"))
  np.testing.assert_array_equal(saved_centroids(grown), saved_centroids(partitioned))
  grown_columns = tf.saved_model.load(str(grown)).index.item_columns.numpy()
  assert sorted(grown_columns[grown_columns >= 0]) == list(range(len(data.items) + 1))
  # validate's fresh process loads it without tfmtl: every op of its graph, the
  # index's included, is stock TensorFlow's (a custom op would not load).
  checks = validate_export(run, grown)
  assert all(check.passed for check in checks), checks
  assert "without tfmtl" in checks[1].detail
  assert "recall@41 1.000" in checks[-1].detail  # every partition probed: exact
  # One partition of six probed: validate's recall check fails below its floor.
  from tfmtl.serving.signatures import ServingModule
  from tfmtl.serving.tf_serving import warmup_inputs
  from tfmtl.serving.validate import _recall_check
  narrow = ServingModule(model, 5, 10, index="partitioned",
                         partitioned=PartitionedConfig(partitions=6, nprobe=1))
  requests = [("retrieve", {name: tf.constant(value) for name, value in
                            warmup_inputs(narrow, "retrieve", 8).items()})]
  check = _recall_check(narrow, requests, floor=0.9)
  assert not check.passed and "over 8 warm-up queries" in check.detail
