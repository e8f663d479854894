"""tf.data pipelines: raw interactions -> encoded, shuffled, batched examples.

Features are encoded once, vectorised, when the pipeline is made (the
vocabulary lookups are not repeated every epoch): the interactions' own
columns row by row, and each user and item feature once per table row,
gathered onto the interactions by id. Each epoch then shuffles
row indices, gathers the rows about `GATHER_ROWS` at a time (whole
batches) and cuts them into batches.

Example:

>>> import pandas as pd
>>> from tfmtl.data import InteractionData, make_dataset
>>> from tfmtl.features import FeatureVocabulary
>>> data = InteractionData.from_frames(pd.DataFrame(
...     {"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i1"], "rating": [5, 3, 4]}))
>>> encoder = FeatureVocabulary.build(data, data.interactions).encoder()
>>> batch = next(iter(make_dataset(data, data.interactions, encoder, batch_size=2)))
>>> sorted(batch), batch["item_id"].numpy()
(['item_id', 'rating', 'user_id'], array([1, 2]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmtl.data.schema import ITEM_ID, USER_ID, InteractionData, table_arrays, vector_dims

if TYPE_CHECKING:  # features imports this package: a cycle at import time
  from tfmtl.features import FeatureEncoder

_ENCODE_CHUNK = 1_000_000
GATHER_ROWS = 65_536  # rows gathered per op, in whole batches, rather than one gather a batch

# tf.data's autotuning runs a thread per iterator, and deleting an iterator
# (Keras does, every epoch) can wait for that thread's next wake-up. Nothing
# here needs it: the prefetch buffer sizes itself without.
_UNTUNED = tf.data.Options()
_UNTUNED.autotune.enabled = False


def encode_examples(encoder: FeatureEncoder,
                    examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Runs the encoder over raw example arrays in large vectorised chunks."""
  size = len(next(iter(examples.values())))
  chunks = [encoder({k: v[start:start + _ENCODE_CHUNK] for k, v in examples.items()})
            for start in range(0, max(size, 1), _ENCODE_CHUNK)]
  return {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}


def encode_table(encoder: FeatureEncoder, table: pd.DataFrame,
                 columns: list[str]) -> dict[str, np.ndarray]:
  """`encode_examples` of a frame's `columns` (e.g. a feature table's)."""
  return encode_examples(encoder, table_arrays(table, columns, vector_dims(encoder.specs)))


def encode_interactions(encoder: FeatureEncoder, data: InteractionData,
                        interactions: pd.DataFrame) -> dict[str, np.ndarray]:
  """Encoded examples of `interactions`, the arrays of
  `encode_examples(encoder, data.examples(interactions))`.

  The feature tables are encoded once per user and item and gathered onto
  the interactions by id index, in place of joining their raw values onto
  every interaction.

  >>> import pandas as pd
  >>> from tfmtl.config import FeatureConfig
  >>> from tfmtl.data import InteractionData, encode_interactions
  >>> from tfmtl.features import FeatureVocabulary
  >>> data = InteractionData.from_frames(
  ...     pd.DataFrame({"user_id": ["u1", "u2", "u2"], "item_id": ["i1", "i2", "i1"]}),
  ...     items=pd.DataFrame({"item_id": ["i1", "i2"], "genre": ["Drama", "Comedy"]}),
  ...     item_features={"genre": FeatureConfig("categorical")})
  >>> encoder = FeatureVocabulary.build(data, data.interactions).encoder()
  >>> encoded = encode_interactions(encoder, data, data.interactions)
  >>> encoded["item_id"], encoded["genre"]  # i1 and Drama are the most frequent: index 1
  (array([1, 2, 1]), array([1, 2, 1]))
  """
  encoded = encode_table(encoder, interactions, data.interaction_columns(interactions))
  for table, id_column, features in ((data.users, USER_ID, data.user_features),
                                     (data.items, ITEM_ID, data.item_features)):
    if not features:
      continue
    table = table[[id_column, *features]].reset_index(drop=True)
    table_ids = table[id_column]
    table = table.reindex(range(len(table) + 1))  # and a last row, every feature missing
    table_encoded = encode_table(encoder, table, [id_column, *features])
    rows = _table_rows(table_encoded[id_column][:-1], encoded[id_column],
                       encoder.vocabulary.size(id_column), table_ids, interactions[id_column])
    for name in features:
      encoded[name] = table_encoded[name][rows]
  return encoded


def _table_rows(table_indices: np.ndarray, indices: np.ndarray, vocabulary_size: int,
                table_ids: pd.Series, ids: pd.Series) -> np.ndarray:
  """Each interaction's row in its feature table, -1 where it has none.

  Ids in the vocabulary are found by their index (a table holds an id
  once); only out-of-vocabulary ids, which share index 0, are looked up by
  their string.
  """
  known = table_indices > 0
  row_of_index = np.full(vocabulary_size, -1, np.int64)
  row_of_index[table_indices[known]] = np.flatnonzero(known)
  rows = row_of_index[indices]
  unknown = np.flatnonzero(indices == 0)
  if len(unknown):
    rows[unknown] = pd.Index(table_ids).get_indexer(ids.iloc[unknown])
  return rows


def make_dataset(data: InteractionData,
                 interactions: pd.DataFrame,
                 encoder: FeatureEncoder,
                 batch_size: int,
                 shuffle: bool = False,
                 seed: Optional[int] = None,
                 drop_remainder: bool = False) -> tf.data.Dataset:
  """Batches of encoded features and labels for `model.fit` / `evaluate`.

  Args:
    data: the data the interactions come from (for the feature tables).
    interactions: the rows to serve, e.g. a split's `train`.
    encoder: the model's `FeatureEncoder` (`model.encoder`).
    batch_size: examples per batch.
    shuffle: reshuffle the rows every epoch.
    seed: shuffling seed.
    drop_remainder: drop a last, smaller batch (TPUs need fixed shapes).
  """
  return batched_dataset(encode_interactions(encoder, data, interactions), batch_size,
                         shuffle, seed, drop_remainder)


def batched_dataset(encoded: dict[str, np.ndarray], batch_size: int, shuffle: bool = False,
                    seed: Optional[int] = None, drop_remainder: bool = False,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    epochs: Optional[range] = None) -> tf.data.Dataset:
  """`make_dataset` from examples already encoded (`encode_interactions`). It
  runs no Python encoder, so a ParameterServerStrategy worker's dataset
  function (traced in a `tf.function`) can call it; given that worker's
  `input_context`, it serves the worker's share of each epoch's rows (every
  n-th of the order all workers draw from the same seed).

  Without `epochs`, the dataset is one epoch, shuffled afresh each time it
  is iterated. With `epochs` (a range of epoch numbers), it is those epochs'
  batches one after another, epoch `e`'s order drawn from `(seed, e)` alone:
  a run resumed at epoch `e` sees the batches an uninterrupted run would.
  """
  columns = {name: tf.constant(values) for name, values in encoded.items()}
  size = len(next(iter(encoded.values())))
  orders = _row_orders(size, shuffle, seed, epochs)
  if input_context is not None and input_context.num_input_pipelines > 1:
    workers, worker = input_context.num_input_pipelines, input_context.input_pipeline_id
    orders = orders.map(lambda rows: rows[worker::workers])
    size = len(range(worker, size, workers))

  def epoch_batches(rows: tf.Tensor) -> tf.data.Dataset:
    chunks = tf.data.Dataset.from_tensors(rows).rebatch(
        batch_size * max(1, GATHER_ROWS // batch_size)).map(
            lambda rows: {k: tf.gather(v, rows) for k, v in columns.items()})
    return chunks.rebatch(batch_size, drop_remainder=drop_remainder)
  steps = size // batch_size if drop_remainder else -(-size // batch_size)
  batches = orders.flat_map(epoch_batches).apply(
      tf.data.experimental.assert_cardinality(  # Keras counts the steps
          steps * (1 if epochs is None else len(epochs))))
  return batches.prefetch(tf.data.AUTOTUNE).with_options(_UNTUNED)


def _row_orders(size: int, shuffle: bool, seed: Optional[int],
                epochs: Optional[range] = None) -> tf.data.Dataset:
  """An element per epoch: its row indices, [size], a permutation when
  shuffling (fresh each iteration without `epochs`, else drawn from
  `(seed, epoch)`): one vectorised shuffle an epoch, in place of
  `Dataset.shuffle`'s row by row."""
  rows = tf.range(size, dtype=tf.int64)
  if not shuffle:
    return tf.data.Dataset.from_tensors(rows).repeat(1 if epochs is None else len(epochs))
  if epochs is None:
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return seeds.map(lambda epoch_seed: tf.random.experimental.stateless_shuffle(
        rows, seed=tf.stack([epoch_seed, 0])))
  base = tf.constant(seed or 0, tf.int64)
  return tf.data.Dataset.from_tensor_slices(tf.constant(list(epochs), tf.int64)).map(
      lambda epoch: tf.random.experimental.stateless_shuffle(
          rows, seed=tf.stack([base, epoch + 1])))
