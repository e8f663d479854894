"""The signatures of an exported model: what TF Serving answers.

Every input and output is batched (first dimension: the batch), so REST's
row (`instances`) and column (`inputs`) formats and gRPC PredictRequests
reach every signature. The *user inputs* are the raw user features:
`user_id` and each user feature column (strings; bucketized ones float32),
each [batch], and, for a sequence model, `history` (see below). Vector user
features (propagated interests) travel inside and are looked up by `user_id`.

| signature | inputs | outputs |
|---|---|---|
| `serving_default` | user inputs | `item_ids` string, `scores`: [batch, top_k] |
| `retrieve` | user inputs, `k` int32 [batch], `exclude_item_ids` string [batch, n] | `item_ids`, `scores`: [batch, k] |
| `rank` | user inputs, `item_id` string [batch, n] (and `domain`) | `score` (the blend), the retrieval score and one output per ranking task: float32 [batch, n] |
| `recommend` | as `retrieve` (and `domain`) | `item_ids`, `score` (the blend) and one output per task: [batch, k] |
| `query_embedding` | user inputs | `embedding` [batch, dim] |
| `candidate_embedding` | `item_id` string [batch] | `embedding` [batch, dim] |
| `candidate_embedding_from_features` | item inputs (below) | `embedding` [batch, dim] |

`retrieve` finds the best items (query . candidate) with the export's index
(`export.index`: exact brute force by default, k-means partitions, or
ScaNN; see `tfmtl.serving.index`). `recommend` is the two-stage cascade in one call:
it retrieves the best `candidates` items, scores each with every ranking
task (binary tasks as a probability) and returns the top k by the blend
`sum(weights[task] * task score)`, where the retrieval task's score is the
retrieval score. Outputs are sorted best first. `rank` scores the items a
client gives (the second stage of a cascade whose first stage is
elsewhere) in the same terms: the retrieval score (`retrieve`'s, under the
retrieval task's name, e.g. `retrieval`), each ranking task's and the blend
(`score`), in the order given.

Requests that are wrong but answerable are answered: unknown user and item
ids map to the out-of-vocabulary row; `k` is clipped to [1, catalogue] (one
k serves the batch: its largest); `exclude_item_ids` is padded with "" (n
may be 0) and unknown ids in it are ignored; when exclusions leave fewer
than k items, the missing places have item id "" and the lowest float
score (in `recommend`, every task's output too).

A multi-domain model's (`data.domain_column`) `rank` and `recommend` also
take `domain`, string [batch]: the domain each query is scored for (its
ranking heads or gates); a domain the model never saw gets the mean of
every domain's. Retrieval is shared, so the other signatures do not take it.

`candidate_embedding_from_features` is exported for models that read item
text (`content`): it places an item no one has trained on, from its raw
item features (strings; bucketized ones float32) and the text columns its
content recipe reads (strings, e.g. `title`), each [batch]. The export's
own text encoder (`tfmtl.serving.text`) turns those columns into the
content vector, so a new item needs no tfmtl, no export and no re-encoding;
its id is read as one the model never saw.

`history` is one string per query: the user's recent item ids, most recent
first, joined by `|` (e.g. "i50|i100|i7"; "" for none). Spaces around ids
are trimmed (" i50 | i100 " reads as "i50|i100"), empty ids are skipped and
ids the model does not know are dropped; a history that names ids but no
known one (e.g. "i50,i100", another separator) fails rather than silently
reading as no history.

Requests that cannot be answered fail with INVALID_ARGUMENT and a message
that names the input. The checks are ops inside the signatures, so TF
Serving runs them too:

- an input whose rank is not the table's, e.g. a scalar `k`, a [batch, 1]
  `user_id` or a 1-D `exclude_item_ids` (which would otherwise be read as
  one id per query): "exclude_item_ids: expected shape [batch, n] (a list
  of ids per query), got rank 1";
- inputs whose batch sizes differ;
- a `history` that names no known item: "history: `i50,i100` has no known
  item id; expected item ids joined by `|` ...".

So that these checks answer (rather than TF's own errors deep in the
graph), the SavedModel declares every input with any shape; the shapes in
the table are the ones checked.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmtl.config import ExportConfig, PartitionedConfig, ScannConfig, TaskConfig
from tfmtl.content import CONTENT
from tfmtl.data.schema import DOMAIN, HISTORY, HISTORY_SEPARATOR, ITEM_ID, USER_ID, vector_dims
from tfmtl.model import CATALOGUE_CHUNK
from tfmtl.serving.index import BruteForceIndex, PartitionedIndex, ScannIndex
from tfmtl.serving.text import ServingText
from tfmtl.tasks import task_type
from tfmtl.top_k import EXCLUDED_SCORE, top_k

K, EXCLUDE = "k", "exclude_item_ids"


class ServingModule(tf.Module):
  """The signatures of an exported `MultiTaskModel` (see module doc).

  Args:
    model: a trained `MultiTaskModel`.
    top_k: items `serving_default` returns (clipped to the catalogue).
    recommend_candidates: items `recommend` retrieves before ranking.
    recommend_weights: task name -> blend weight (default: 1 for every
      ranking task, or the retrieval score alone without ranking tasks).
    index: `brute_force`, `partitioned` or `scann` (see `tfmtl.serving.index`).
    scann: the ScaNN index's options.
    text: the text encoder of a model that reads item text.
    partitioned: the partitioned index's options.
    centroids: an earlier export's partitions, kept (`PartitionedIndex`).
  """

  @classmethod
  def from_config(cls, model, export: ExportConfig, text: Optional[ServingText] = None,
                  centroids: Optional[np.ndarray] = None) -> "ServingModule":
    """The signatures as a config's `export` section says."""
    return cls(model, export.top_k, export.recommend_candidates,
               export.recommend_weights or None, export.index, export.scann, text,
               export.partitioned, centroids)

  def __init__(self, model, top_k: int = 100, recommend_candidates: int = 100,
               recommend_weights: Optional[dict[str, float]] = None,
               index: str = "brute_force", scann: Optional[ScannConfig] = None,
               text: Optional[ServingText] = None,
               partitioned: Optional[PartitionedConfig] = None,
               centroids: Optional[np.ndarray] = None):
    super().__init__(name="tfmtl_serving")
    if (text is None) != (CONTENT not in model.vocabulary.item_features):
      raise ValueError("text: the model reads item text (`content`): give its text encoder "
                       "(`ServingText.for_run`)" if text is None else
                       "text: the model reads no item text")
    self.text = text
    self.encoder = model.encoder
    self.query_tower = model.query_tower
    self.candidate_tower = model.candidate_tower
    self.ranking = model.ranking
    self.task_configs = dict(model.task_configs)
    self.num_items = len(model.catalogue_item_ids)
    self.top_k = min(top_k, self.num_items)
    self.recommend_candidates = min(recommend_candidates, self.num_items)
    self.retrieval_task = retrieval_task_name(self.task_configs)
    self.recommend_weights = recommend_weights or default_blend(self.task_configs)
    self.catalogue_item_ids = tf.Variable(model.catalogue_item_ids.astype(str), trainable=False,
                                          name="catalogue_item_ids")
    # The catalogue's embeddings stored transposed, [dim, items]: a plain
    # matmul against it is several times faster on CPU than one with transpose_b.
    candidates = model.catalogue_embeddings(chunk=CATALOGUE_CHUNK)
    self.candidate_matrix = tf.Variable(tf.transpose(candidates),
                                        trainable=False, name="candidate_matrix")
    if index == "scann":
      self.index = ScannIndex(np.asarray(candidates), max(self.top_k, self.recommend_candidates),
                              scann or ScannConfig())
    elif index == "partitioned":
      self.index = PartitionedIndex(np.asarray(candidates), partitioned or PartitionedConfig(),
                                    centroids, self.candidate_matrix)
    else:
      self.index = BruteForceIndex(self.candidate_matrix)
    # Row 0 is an unknown item (all features OOV); row i+1 is catalogue item i.
    unknown = model.encoder(model.encoder.missing(1))
    self.item_rows = keras.layers.StringLookup(
        vocabulary=model.catalogue_item_ids.astype(str))
    self.item_features = {
        name: tf.Variable(tf.concat([unknown[name], values], axis=0), trainable=False,
                          name=f"item_{name}")
        for name, values in model.catalogue_features.items()}
    self.user_vectors = {}
    if model.user_vectors is not None:
      self.user_rows = keras.layers.StringLookup(
          vocabulary=model.user_vectors[USER_ID].astype(str).to_numpy())
      self.user_vectors = {
          name: tf.Variable(np.concatenate([np.zeros([1, dim], np.float32),  # unknown users
                                            np.stack(model.user_vectors[name])]),
                            trainable=False, name=f"user_{name}")
          for name, dim in vector_dims(model.vocabulary.user_features).items()}
    raw = model.encoder.raw_signature
    self.user_signature = {name: raw[name] for name in model.encoder.user_inputs
                           if name not in self.user_vectors}
    retrieve_signature = {**self.user_signature,
                          K: tf.TensorSpec([None], tf.int32, name=K),
                          EXCLUDE: tf.TensorSpec([None, None], tf.string, name=EXCLUDE)}
    # What a multi-domain model's ranking signatures add (module doc).
    self.domain_signature = ({DOMAIN: raw[DOMAIN]} if model.vocabulary.domains
                             and self.ranking is not None else {})
    self.signature_specs = {
        "serving_default": (self._serving_default, self.user_signature),
        "retrieve": (self._retrieve, retrieve_signature),
        "recommend": (self._recommend, {**retrieve_signature, **self.domain_signature}),
        "query_embedding": (self._query_embedding, self.user_signature),
        "candidate_embedding": (self._candidate_embedding,
                                {ITEM_ID: tf.TensorSpec([None], tf.string, name=ITEM_ID)}),
    }
    if text is not None:
      item_inputs = {name: raw[name] for name in model.vocabulary.item_features
                     if name != CONTENT}
      item_inputs.update({column: tf.TensorSpec([None], tf.string, name=column)
                          for column in text.columns if column not in item_inputs})
      self.signature_specs["candidate_embedding_from_features"] = (
          self._candidate_embedding_from_features, item_inputs)
    if self.ranking is not None:
      self.signature_specs["rank"] = (self._rank, {
          **self.user_signature, ITEM_ID: tf.TensorSpec([None, None], tf.string, name=ITEM_ID),
          **self.domain_signature})
    for name, (method, signature) in self.signature_specs.items():
      # Declared with any shape: each input's shape is checked inside (`_checked`),
      # where a wrong one fails with a message naming the input.
      any_shape = {key: tf.TensorSpec(None, spec.dtype, name=spec.name)
                   for key, spec in signature.items()}
      setattr(self, name, tf.function(self._checked(method, signature),
                                       input_signature=[any_shape], autograph=False))

  def functions(self) -> dict:
    """Signature name -> its `tf.function`, for `tf.saved_model.save`'s
    `signatures` (traced there, in the save's context, once: a function
    traced before the save is traced again in it)."""
    return {name: getattr(self, name) for name in self.signature_specs}

  # The signatures.

  def _serving_default(self, features):
    query = self._query(features)
    nothing = tf.fill([tf.shape(query)[0], 0], -1)
    return self._top_items(*self.index.top(query, self.top_k, nothing))

  def _retrieve(self, features):
    k = self._clipped_k(features[K], self.num_items)
    return self._top_items(*self.index.top(self._query(features), k,
                                           self._columns(features[EXCLUDE])))

  def _rank(self, features):
    item_ids = features[ITEM_ID]
    batch, candidates = tf.shape(item_ids)[0], tf.shape(item_ids)[1]
    query = self._query(features)
    candidate = self._candidates(tf.reshape(item_ids, [-1]))
    outputs = {name: tf.reshape(scores, [batch, candidates])
               for name, scores in self._task_scores(query, candidate, candidates,
                                                     features.get(DOMAIN)).items()}
    outputs[self.retrieval_task] = tf.einsum(  # as `retrieve` scores them
        "bd,bnd->bn", query, tf.reshape(candidate, [batch, candidates, -1]))
    outputs["score"] = tf.add_n([weight * outputs[name]
                                 for name, weight in self.recommend_weights.items()])
    return outputs

  def _recommend(self, features):
    query = self._query(features)
    n = self.recommend_candidates
    shortlist_scores, shortlist = self.index.top(query, n, self._columns(features[EXCLUDE]))
    candidates = tf.transpose(tf.gather(self.candidate_matrix, shortlist, axis=1),
                              [1, 2, 0])  # [b, n, d]
    batch = tf.shape(candidates)[0]
    task_scores = {name: tf.reshape(values, [batch, n]) for name, values in self._task_scores(
        query, tf.reshape(candidates, [-1, candidates.shape[-1]]), n,
        features.get(DOMAIN)).items()}
    task_scores[self.retrieval_task] = shortlist_scores
    blend = tf.add_n([weight * task_scores[name]
                      for name, weight in self.recommend_weights.items()])
    blend = tf.where(shortlist_scores > EXCLUDED_SCORE, blend, EXCLUDED_SCORE)
    best_scores, best = top_k(blend, self._clipped_k(features[K], n))
    kept = best_scores > EXCLUDED_SCORE
    outputs = {"item_ids": tf.where(kept, tf.gather(self.catalogue_item_ids, tf.gather(
        shortlist, best, batch_dims=1)), ""),
               "score": best_scores}
    outputs.update({name: tf.where(kept, tf.gather(values, best, batch_dims=1),
                                   EXCLUDED_SCORE)
                    for name, values in task_scores.items()})
    return outputs

  def _query_embedding(self, features):
    return {"embedding": self._query(features)}

  def _candidate_embedding(self, features):
    return {"embedding": self._candidates(features[ITEM_ID])}

  def _candidate_embedding_from_features(self, features):
    batch = tf.shape(next(iter(features.values())))[:1]
    raw = {**features, ITEM_ID: tf.fill(batch, ""),  # an id the model never trained on
           CONTENT: self.text.item_vectors({name: features[name] for name in self.text.columns})}
    encoded = self.encoder(raw)
    return {"embedding": self.candidate_tower({name: encoded[name]
                                               for name in self.item_features})}

  # Their checks (module doc).

  def _checked(self, method, signature: dict):
    """`method` behind checks of its inputs: each has the rank `signature`
    documents, then all have the same batch size; a `history` is read
    leniently (`_history`). The checks are graph ops, so TF Serving runs
    them; each fails with INVALID_ARGUMENT naming the input."""
    def checked(features):
      names = sorted(features)
      ranks = [_rank_check(name, features[name], signature[name]) for name in names]
      with tf.control_dependencies(ranks):  # before anything reads a shape
        features = {name: tf.identity(features[name]) for name in names}
      for name, value in features.items():
        # The static shape the checks ensure. (Not tf.ensure_shape: with
        # constant folding on, it fails first, with TF's own message.)
        value.set_shape(signature[name].shape)
      sizes = tf.stack([tf.shape(features[name])[0] for name in names])
      checks = [tf.debugging.Assert(
          tf.reduce_all(sizes == sizes[0]),
          ["the inputs' batch sizes (first dimensions) differ:", *names, sizes],
          summarize=len(names))]
      if HISTORY in features:
        features[HISTORY], check = self._history(features[HISTORY])
        checks.append(check)
      with tf.control_dependencies(checks):
        return method({name: tf.identity(value) for name, value in features.items()})
    return checked

  def _history(self, history):
    """`history` (module doc) with spaces around ids trimmed and empty and
    unknown ids dropped, and the check that fails when a history names ids
    but none the model knows."""
    items = tf.strings.strip(tf.strings.split(history, HISTORY_SEPARATOR))
    items = tf.ragged.boolean_mask(items, tf.strings.length(items) > 0)
    known = tf.ragged.boolean_mask(items, self.encoder.lookups[ITEM_ID](items) > 0)
    unreadable = (items.row_lengths() > 0) & (known.row_lengths() == 0)
    example = tf.strings.substr(
        tf.strings.reduce_join(tf.boolean_mask(history, unreadable)[:1]), 0, 200)
    # (Backquotes: the error message escapes quotes.)
    check = tf.debugging.Assert(~tf.reduce_any(unreadable), [tf.strings.join([
        f"{HISTORY}: `", example, "` has no known item id; expected item ids joined by "
        f"`{HISTORY_SEPARATOR}` (most recent first), e.g. `i50{HISTORY_SEPARATOR}i100`"])])
    return tf.strings.reduce_join(known, axis=1, separator=HISTORY_SEPARATOR), check

  # Their parts.

  def _query(self, features):
    features = {name: features[name] for name in self.user_signature}
    if self.user_vectors:
      rows = self.user_rows(features[USER_ID])
      features.update({name: tf.gather(table, rows)
                       for name, table in self.user_vectors.items()})
    return self.query_tower(self.encoder(features))

  def _candidates(self, item_ids):
    rows = self.item_rows(item_ids)
    return self.candidate_tower({name: tf.gather(values, rows)
                                 for name, values in self.item_features.items()})

  def _task_scores(self, query, candidates, per_query, domains=None):
    """Each ranking task's score for `candidates`, `per_query` per query row
    (`domains`: each query's raw domain)."""
    if self.ranking is None:
      return {}
    query = tf.repeat(query, per_query, axis=0)
    if domains is not None:
      domains = tf.repeat(self.encoder.lookups[DOMAIN](domains), per_query, axis=0)
    return {name: task_type(self.task_configs[name].type).prediction(logits)
            for name, logits in self.ranking(query, candidates, domains).items()}

  def _columns(self, item_ids):
    """Catalogue columns of `item_ids`; -1 for unknown ids and ""."""
    return tf.cast(self.item_rows(item_ids), tf.int32) - 1

  def _top_items(self, scores, columns):
    return {"item_ids": tf.where(scores > EXCLUDED_SCORE,
                                 tf.gather(self.catalogue_item_ids, columns), ""),
            "scores": scores}

  @staticmethod
  def _clipped_k(k, limit: int):
    return tf.clip_by_value(tf.reduce_max(tf.concat([k, [1]], 0)), 1, limit)


def default_blend(task_configs: dict[str, TaskConfig]) -> dict[str, float]:
  """`recommend`'s default weights: 1 per ranking task, else the retrieval score."""
  ranking = [name for name, task in task_configs.items() if task_type(task.type).reads_pair]
  return ({name: 1.0 for name in ranking} if ranking
          else {retrieval_task_name(task_configs): 1.0})


def retrieval_task_name(task_configs: dict[str, TaskConfig]) -> str:
  """The name `recommend` gives the retrieval score: the retrieval task's."""
  return next((name for name, task in task_configs.items() if task.type == "retrieval"),
              "retrieval")


def expected_shape(spec: tf.TensorSpec) -> str:
  """An input's documented shape in words, as errors name it."""
  if spec.shape.rank == 1:
    return "[batch] (one value per row)"
  if spec.dtype == tf.string:
    return "[batch, n] (a list of ids per query)"
  return f"[batch, {', '.join(str(d) for d in spec.shape[1:])}]"


def _rank_check(name: str, value: tf.Tensor, spec: tf.TensorSpec):
  """An op that fails unless `value` has `spec`'s rank, naming `name` and
  the expected shape. The rank is read at run time (`value` is declared
  with any shape, so nothing folds it away)."""
  rank = tf.raw_ops.Rank(input=value)
  return tf.debugging.Assert(tf.equal(rank, spec.shape.rank), [tf.strings.join([
      f"{name}: expected shape {expected_shape(spec)}, got rank ", tf.strings.as_string(rank)])])
