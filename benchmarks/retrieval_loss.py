"""The retrieval loss alone: TFRS's task against tfmtl's `InBatchSoftmax`.

Forward and backward of the in-batch softmax on a fixed batch of 1,024
MovieLens 100K ratings (protocol A's training split, drawn with seed 0:
their movies, with repeats, and the movies' shares of the ratings for
logQ), random 32-wide embeddings (one per movie), temperature 0.1,
accidental-hit mask: the default model's retrieval settings. In one
process, alternating rounds of 100 steps each (9 rounds), median:

- `tfrs`: `tfrs.tasks.Retrieval` with Keras' categorical cross-entropy;
- `tfrs_xla`: the same loss compiled with XLA;
- `tfmtl_every_candidate`: `tfmtl.tasks.InBatchSoftmax` scoring all 1,024
  candidates;
- `tfmtl`: the same with `unique_candidates`, each movie scored once, what
  tfmtl trains with;
- `matmul_only`: the scores' matmul over all 1,024 candidates, forward and
  backward, the floor of the versions that score every candidate.

    python benchmarks/retrieval_loss.py

Writes benchmarks/results/retrieval_loss.json (milliseconds per step).
"""

from __future__ import annotations

import time

import tfmtl  # noqa: F401  (binds Keras 2 first)
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl import training
from tfmtl.config import ExperimentConfig
from tfmtl.data.pipeline import encode_table
from tfmtl.data.schema import ITEM_ID
from tfmtl.tasks import InBatchSoftmax

from common import write_record

BATCH, DIM, TEMPERATURE = 1024, 32, 0.1
ROUNDS, STEPS = 9, 100


def movielens_batch() -> tuple[tf.Tensor, tf.Tensor, int]:
  """A batch's movie indices as the model encodes them (repeats included),
  their sampling probabilities as the model's logQ reads them, and the
  number of indices."""
  config = ExperimentConfig().with_overrides(
      ["split.protocol=random", "split.fractions=[0.8, 0.0, 0.2]"])
  prepared = training.prepare(config)
  vocabulary = prepared.vocabulary
  index = encode_table(vocabulary.encoder(), prepared.split.train, [ITEM_ID])[ITEM_ID]
  batch = np.random.default_rng(0).choice(index, BATCH, replace=False)
  probability = vocabulary.item_probabilities()
  return (tf.constant(batch, tf.int64), tf.constant(probability[batch]),
          vocabulary.size(ITEM_ID))


def main():
  ids, probability, num_indices = movielens_batch()
  query = tf.Variable(tf.math.l2_normalize(tf.random.normal([BATCH, DIM], seed=0), -1))
  movie = tf.Variable(tf.math.l2_normalize(tf.random.normal([num_indices, DIM], seed=1), -1))
  tfrs_task = tfrs.tasks.Retrieval(
      loss=keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=keras.losses.Reduction.NONE),
      temperature=TEMPERATURE, remove_accidental_hits=True)

  def tfrs_loss(q, c):
    return tf.reduce_mean(tfrs_task(q, c, candidate_sampling_probability=probability,
                                    candidate_ids=ids, compute_metrics=False))

  def tfmtl_loss(unique_candidates):
    task = InBatchSoftmax(temperature=TEMPERATURE, remove_accidental_hits=True,
                          unique_candidates=unique_candidates)
    return lambda q, c: tf.reduce_mean(task(q, c, candidate_sampling_probability=probability,
                                            candidate_ids=ids))

  def matmul_only(q, c):
    return tf.reduce_sum(tf.matmul(q, c, transpose_b=True))

  losses = {"tfrs": tfrs_loss, "tfrs_xla": tf.function(tfrs_loss, jit_compile=True),
            "tfmtl_every_candidate": tfmtl_loss(False), "tfmtl": tfmtl_loss(True),
            "matmul_only": matmul_only}
  steps = {}
  for name, loss in losses.items():
    @tf.function
    def step(loss=loss):
      with tf.GradientTape() as tape:
        value = loss(query, tf.gather(movie, ids))
      return value, tape.gradient(value, [query, movie])
    step()  # tracing
    steps[name] = step
  rounds = {name: [] for name in steps}
  for _ in range(ROUNDS):
    for name, step in steps.items():
      start = time.perf_counter()
      for _ in range(STEPS):
        value = step()
      float(value[0])
      rounds[name].append((time.perf_counter() - start) / STEPS * 1e3)
  milliseconds = {name: float(np.median(values)) for name, values in rounds.items()}
  path = write_record("retrieval_loss", {
      "batch": BATCH, "distinct_movies": int(tf.size(tf.unique(ids)[0])),
      "dim": DIM, "temperature": TEMPERATURE,
      "logq_correction": True, "remove_accidental_hits": True,
      "timing": f"median of {ROUNDS} alternating rounds of {STEPS} steps, "
                "forward and backward"},
      {"milliseconds_per_step": milliseconds}, [0])
  print(", ".join(f"{name} {value:.2f} ms" for name, value in milliseconds.items()), "->", path)


if __name__ == "__main__":
  main()
