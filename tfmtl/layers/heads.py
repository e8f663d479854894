"""Task heads: an MLP from a representation to a task's logits.

`RankingHeads` read a (query, candidate) embedding pair as [query,
candidate, query * candidate], optionally crossed by DCN `Cross` layers,
pass it through a multi-task block (what the tasks share,
`tfmtl.layers.multitask`), and each task's representation through its own
head to one logit. `PredictionHead` is one head on its own (the
classification tasks put one on a tower's embedding).

Example:

>>> import tensorflow as tf
>>> from tfmtl.layers import Independent, RankingHeads
>>> heads = RankingHeads(Independent(["rating"]), {"rating": [16]})
>>> heads(tf.ones([4, 8]), tf.ones([4, 8]))["rating"].shape
TensorShape([4, 1])
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfmtl.layers.domains import by_domain, unknown_if_none
from tfmtl.layers.mlp import apply_stack, dense_stack


class PredictionHead(keras.layers.Layer):
  """ReLU layers `hidden_0, ...`, then a linear `logit` layer of `units`
  (float32 logits under any dtype policy)."""

  def __init__(self, hidden_layers: Sequence[int], units: int, **kwargs):
    super().__init__(**kwargs)
    self.dense_layers = (dense_stack(hidden_layers, "hidden")
                         + [keras.layers.Dense(units, name="logit")])

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    return tf.cast(apply_stack(self.dense_layers, inputs), tf.float32)  # losses in float32


class DomainHeads(keras.layers.Layer):
  """A `PredictionHead` to one logit per domain; each row is scored by its
  domain's (`tfmtl.layers.domains`), plus, with `shared`, a head every
  domain shares (each domain's own head then learns its difference).

  Args:
    hidden_layers: hidden widths of each head.
    num_domains: D, the training domains.
    shared: add a shared head's logit to the domain's.
  """

  def __init__(self, hidden_layers: Sequence[int], num_domains: int, shared: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.domain_heads = [PredictionHead(hidden_layers, 1, name=f"domain_{index + 1}")
                         for index in range(num_domains)]
    self.shared_head = PredictionHead(hidden_layers, 1, name="shared") if shared else None

  def call(self, inputs: tf.Tensor, domains: tf.Tensor) -> tf.Tensor:
    logits = tf.concat([head(inputs) for head in self.domain_heads], axis=1)  # [batch, D]
    own = by_domain(logits, domains)[:, None]
    return own if self.shared_head is None else own + self.shared_head(inputs)


class RankingHeads(keras.layers.Layer):
  """Optional crosses, a multi-task block, then a head per task to one logit.

  Args:
    block: a multi-task block whose tasks are the keys of `head_layers`.
    head_layers: hidden widths of each task's head.
    cross_layers: number of DCN `Cross` layers on the pair (0: none).
    domain_heads: D > 0: each task has a head per domain (`DomainHeads`),
      and `call` takes each row's domain index.
    shared_head: with `domain_heads`, a shared head beside them.
  """

  def __init__(self, block: keras.layers.Layer, head_layers: dict[str, Sequence[int]],
               cross_layers: int = 0, domain_heads: int = 0, shared_head: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.block = block
    self.crosses = [tfrs.layers.dcn.Cross(name=f"cross_{i}") for i in range(cross_layers)]
    self.heads = {task: (DomainHeads(layers, domain_heads, shared_head, name=f"{task}_head")
                         if domain_heads else PredictionHead(layers, 1, name=f"{task}_head"))
                  for task, layers in head_layers.items()}

  def coupling(self, pairs: Sequence[Sequence[str]], distance: str = "squared") -> tf.Tensor:
    """How far apart the heads of each task pair are, summed over the pairs:
    `squared`, the summed squared differences of their same-shaped weights,
    or `cosine`, 1 - the cosine of their weights (each head's flattened and
    joined into one vector)."""
    total = tf.constant(0.0)
    for first, second in pairs:
      mine, theirs = self.heads[first].weights, self.heads[second].weights
      if [w.shape for w in mine] != [w.shape for w in theirs]:
        raise ValueError(f"coupling: the heads of {first!r} and {second!r} differ in shape")
      if distance == "squared":
        total += tf.add_n([tf.reduce_sum(tf.square(a - b)) for a, b in zip(mine, theirs)])
      else:
        mine, theirs = (tf.concat([tf.reshape(w, [-1]) for w in ws], 0) for ws in (mine, theirs))
        total += 1.0 - tf.reduce_sum(tf.math.l2_normalize(mine) * tf.math.l2_normalize(theirs))
    return total

  def call(self, query_embeddings: tf.Tensor, candidate_embeddings: tf.Tensor,
           domains: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Each task's logit [batch, 1] for the (query, candidate) pairs;
    `domains`: each pair's domain index (`tfmtl.layers.domains`; None: an
    unknown domain's)."""
    # Keras casts only the first input to the compute dtype (16 bits when mixed).
    query, candidate = (tf.cast(e, self.compute_dtype)
                        for e in (query_embeddings, candidate_embeddings))
    pair = tf.concat([query, candidate, query * candidate], axis=-1)
    crossed = pair
    for cross in self.crosses:  # x_{l+1} = x_0 * (W x_l + b) + x_l
      crossed = cross(pair, crossed)
    domains = unknown_if_none(domains, pair)
    representations = self.block(crossed, domains=domains)
    return {task: (head(representations[task], domains) if isinstance(head, DomainHeads)
                   else head(representations[task]))
            for task, head in self.heads.items()}
