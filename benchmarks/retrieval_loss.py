"""The retrieval loss alone: TFRS's task against a hand-written fused gradient.

Forward and backward of the in-batch softmax on a fixed batch (1,024 x 32,
temperature 0.1, logQ correction, accidental-hit mask, the default
model's retrieval settings), best of 3 x 200 steps each, in one process:

- `tfrs`: `tfrs.tasks.Retrieval`, what tfmtl trains with;
- `tfrs_xla`: the same loss compiled with XLA;
- `fused`: temperature folded into the query, the gradient taken from
  TensorFlow's fused softmax cross-entropy, which returns it with the loss;
- `matmul_only`: the two matmuls alone, the floor of any version.

    python benchmarks/retrieval_loss.py

Writes benchmarks/results/retrieval_loss.json (milliseconds per step).
"""

from __future__ import annotations

import time

import tfmtl  # noqa: F401  (binds Keras 2 first)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from common import write_result

BATCH, DIM, TEMPERATURE = 1024, 32, 0.1


def main():
  query = tf.Variable(tf.math.l2_normalize(tf.random.normal([BATCH, DIM], seed=0), -1))
  candidate = tf.Variable(tf.math.l2_normalize(tf.random.normal([BATCH, DIM], seed=1), -1))
  ids = tf.random.uniform([BATCH], 0, 1600, tf.int64, seed=2)
  probability = tf.random.uniform([BATCH], 1e-4, 1e-2, seed=3)
  task = tfrs.tasks.Retrieval(temperature=TEMPERATURE, remove_accidental_hits=True)

  def tfrs_loss(q, c):
    return task(q, c, candidate_sampling_probability=probability, candidate_ids=ids,
                compute_metrics=False)

  def fused_loss(q, c):
    @tf.custom_gradient  # defined where it is traced, as autograph needs
    def loss(q, c):
      scaled = q * (1.0 / TEMPERATURE)
      eye = tf.eye(BATCH)
      duplicates = tf.cast(tf.equal(ids[:, None], ids[None, :]), tf.float32) - eye
      logits = (tf.matmul(scaled, c, transpose_b=True) - tf.math.log(probability)[None, :]
                + duplicates * -1e9)
      rows, backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=logits, labels=eye)

      def gradient(upstream):
        d_logits = backprop * upstream
        return (tf.matmul(d_logits, c) * (1.0 / TEMPERATURE),
                tf.matmul(d_logits, scaled, transpose_a=True))
      return tf.reduce_sum(rows), gradient
    return loss(q, c)

  def matmul_only(q, c):
    return tf.reduce_sum(tf.matmul(q, c, transpose_b=True))

  losses = {"tfrs": tfrs_loss, "tfrs_xla": tf.function(tfrs_loss, jit_compile=True),
            "fused": fused_loss, "matmul_only": matmul_only}
  milliseconds = {}
  for name, loss in losses.items():
    @tf.function
    def step(loss=loss):
      with tf.GradientTape() as tape:
        value = loss(query, candidate)
      return value, tape.gradient(value, [query, candidate])
    step()  # tracing
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(200):
        value = step()
      float(value[0])
      best = min(best, (time.perf_counter() - start) / 200 * 1e3)
    milliseconds[name] = best
  path = write_result("retrieval_loss", {
      "settings": {"batch": BATCH, "dim": DIM, "temperature": TEMPERATURE,
                   "logq_correction": True, "remove_accidental_hits": True,
                   "timing": "best of 3 x 200 steps, forward and backward"},
      "milliseconds_per_step": milliseconds})
  print(", ".join(f"{name} {value:.2f} ms" for name, value in milliseconds.items()), "->", path)


if __name__ == "__main__":
  main()
