"""The retrieval loss alone: TFRS's task against tfmtl's `InBatchSoftmax`.

Forward and backward of the in-batch softmax on a fixed batch (1,024 x 32,
temperature 0.1, logQ correction, accidental-hit mask, the default
model's retrieval settings), in one process, alternating rounds of 100
steps each (9 rounds), median:

- `tfrs`: `tfrs.tasks.Retrieval` with Keras' categorical cross-entropy;
- `tfrs_xla`: the same loss compiled with XLA;
- `tfmtl`: `tfmtl.tasks.InBatchSoftmax`, what tfmtl trains with;
- `matmul_only`: the scores' matmul forward and backward, the floor of
  any version.

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

from tfmtl.tasks import InBatchSoftmax

from common import write_result

BATCH, DIM, TEMPERATURE = 1024, 32, 0.1
ROUNDS, STEPS = 9, 100


def main():
  query = tf.Variable(tf.math.l2_normalize(tf.random.normal([BATCH, DIM], seed=0), -1))
  candidate = tf.Variable(tf.math.l2_normalize(tf.random.normal([BATCH, DIM], seed=1), -1))
  ids = tf.random.uniform([BATCH], 0, 1600, tf.int64, seed=2)
  probability = tf.random.uniform([BATCH], 1e-4, 1e-2, seed=3)
  tfrs_task = tfrs.tasks.Retrieval(
      loss=keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=keras.losses.Reduction.NONE),
      temperature=TEMPERATURE, remove_accidental_hits=True)
  tfmtl_task = InBatchSoftmax(temperature=TEMPERATURE, remove_accidental_hits=True)

  def tfrs_loss(q, c):
    return tf.reduce_mean(tfrs_task(q, c, candidate_sampling_probability=probability,
                                    candidate_ids=ids, compute_metrics=False))

  def tfmtl_loss(q, c):
    return tf.reduce_mean(tfmtl_task(q, c, candidate_sampling_probability=probability,
                                     candidate_ids=ids))

  def matmul_only(q, c):
    return tf.reduce_sum(tf.matmul(q, c, transpose_b=True))

  losses = {"tfrs": tfrs_loss, "tfrs_xla": tf.function(tfrs_loss, jit_compile=True),
            "tfmtl": tfmtl_loss, "matmul_only": matmul_only}
  steps = {}
  for name, loss in losses.items():
    @tf.function
    def step(loss=loss):
      with tf.GradientTape() as tape:
        value = loss(query, candidate)
      return value, tape.gradient(value, [query, candidate])
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
  path = write_result("retrieval_loss", {
      "settings": {"batch": BATCH, "dim": DIM, "temperature": TEMPERATURE,
                   "logq_correction": True, "remove_accidental_hits": True,
                   "timing": f"median of {ROUNDS} alternating rounds of {STEPS} steps, "
                             "forward and backward"},
      "milliseconds_per_step": milliseconds})
  print(", ".join(f"{name} {value:.2f} ms" for name, value in milliseconds.items()), "->", path)


if __name__ == "__main__":
  main()
