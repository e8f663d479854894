"""Full-catalogue evaluation, computed in batches of users.

Two retrieval metric families over every item of the catalogue
(docs/protocols.md):

- `top{k}_accuracy` (protocol A, TFRS's `FactorizedTopK` definition): the
  share of test interactions whose item is among the user's top k items;
  items the user has already seen are not removed.
- `recall@k`, `ndcg@k`, `mrr@k`, `hit@k`, `precision@k` (hits / k) and
  `f1@k` (of the user's precision and recall) (protocol B, RecBole's full
  ranking): per user, the train and validation items are removed from the
  candidates and every test interaction is a relevant item; averaged over
  users with at least one test interaction.

Ranking tasks are scored on the test interactions by their type's exact
metrics (`Task.evaluate`): `<task>_rmse`, `<task>_mae` for regression
tasks, `<task>_auc` for binary ones. Classification and autoencoder tasks
are scored on the distinct users or items of the test interactions by a
classification report per value (`classification_reports`), summed up as
`<task>_micro_f1` and `<task>_macro_f1`.

Anything that scores users against the catalogue can be evaluated: the
model (`ModelScorer`) or the popularity baseline (`PopularityScorer`).

Example:

>>> import numpy as np, pandas as pd
>>> from tfmtl.data import Split
>>> from tfmtl.evaluation import PopularityScorer, retrieval_metrics
>>> train = pd.DataFrame({"user_id": ["a", "b", "b"], "item_id": ["x", "x", "y"]})
>>> test = pd.DataFrame({"user_id": ["a"], "item_id": ["y"]})
>>> scorer = PopularityScorer(train, catalogue=np.array(["x", "y", "z"], dtype=object))
>>> metrics = retrieval_metrics(scorer, Split(train, train[:0], test), ks=[1])
>>> metrics["top1_accuracy"], metrics["recall@1"]  # "x" ranks first; unmasked, "y" misses
(0.0, 1.0)
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras

from tfmtl.config import TaskConfig
from tfmtl.data.history import latest_history
from tfmtl.data.pipeline import make_dataset
from tfmtl.data.schema import (HISTORY, ITEM_ID, USER_ID, InteractionData, ids_in, table_arrays,
                               vector_dims)
from tfmtl.data.splits import Split
from tfmtl.model import CATALOGUE_CHUNK
from tfmtl.optimizers import last_learning_rate
from tfmtl.tasks import task_type
from tfmtl.tasks.base import TaskInputs
from tfmtl.tasks.classification import Classification
from tfmtl.top_k import top_k


class Scorer(Protocol):
  """Scores users against a fixed catalogue of items."""
  catalogue: np.ndarray  # item ids, one per score column

  def scores(self, user_ids: np.ndarray) -> np.ndarray | tf.Tensor:
    """[len(user_ids), len(catalogue)] scores, higher is better."""


class PopularityScorer:
  """Every user gets the items most interacted with in `train` first."""

  def __init__(self, train: pd.DataFrame, catalogue: np.ndarray):
    self.catalogue = catalogue
    counts = train[ITEM_ID].value_counts()
    self._scores = tf.constant(counts.reindex(catalogue, fill_value=0).to_numpy(np.float32))

  def scores(self, user_ids: np.ndarray) -> tf.Tensor:
    return tf.broadcast_to(self._scores, (len(user_ids), len(self.catalogue)))


class ModelScorer:
  """Query-tower embeddings of users . candidate embeddings of the catalogue.

  A sequence model's users are scored with their latest training history
  (`train`, required then).
  """

  def __init__(self, model, data: InteractionData, train: Optional[pd.DataFrame] = None):
    self.model = model
    self.catalogue = model.catalogue_item_ids
    self._users = data.users.set_index(USER_ID)
    length = model.vocabulary.history_length
    if length:
      self._users[HISTORY] = latest_history(train, self._users.index, length)
    self._user_inputs = model.encoder.user_inputs
    self._catalogue_embeddings = model.catalogue_embeddings(chunk=CATALOGUE_CHUNK)

  def scores(self, user_ids: np.ndarray) -> tf.Tensor:
    rows = self._users.reindex(user_ids).reset_index()  # unknown users: all missing
    raw = table_arrays(rows, self._user_inputs, vector_dims(self.model.vocabulary.user_features))
    query = self.model.query_tower(self.model.encoder(raw))
    return tf.linalg.matmul(query, self._catalogue_embeddings, transpose_b=True)


FULL_RANKING_METRICS = ("recall", "ndcg", "mrr", "hit", "precision", "f1")  # protocol B, each @k


class _ColumnsByUser:
  """The `catalogue` columns of `interactions` (-1: an item outside it),
  grouped by their user's position in `users` (rows of other users
  dropped), as CSR arrays; `distinct`: each (user, known item) pair once,
  unknown items dropped."""

  def __init__(self, users: pd.Index, catalogue: pd.Index, interactions: pd.DataFrame,
               distinct: bool):
    user = users.get_indexer(interactions[USER_ID])
    column = catalogue.get_indexer(interactions[ITEM_ID].to_numpy())
    keep = (user >= 0) & (column >= 0) if distinct else user >= 0
    user, column = user[keep].astype(np.int64), column[keep].astype(np.int64)
    if distinct:
      pairs = np.unique(user * len(catalogue) + column)
      user, column = np.divmod(pairs, len(catalogue))
    else:
      order = np.argsort(user, kind="stable")
      user, column = user[order], column[order]
    self.user, self.column = user, column
    self.offsets = np.searchsorted(user, np.arange(len(users) + 1))

  def batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(row within the batch, column) of users `start` to `stop`."""
    rows = slice(self.offsets[start], self.offsets[stop])
    return self.user[rows] - start, self.column[rows]


@tf.function(reduce_retracing=True)
def _rank(scores, seen, test, k):
  """Protocol B's top `k` columns with `seen` ([row, column] pairs) removed,
  protocol A's `k` best scores with them kept, and the scores of `test`.

  One top-k over the catalogue serves both: the k best scores of a row are
  the k best of its k best unseen scores and its seen scores.
  """
  rows = tf.shape(scores, out_type=tf.int64)[0]
  seen_scores = tf.RaggedTensor.from_value_rowids(tf.gather_nd(scores, seen), seen[:, 0],
                                                  nrows=rows)
  test_scores = tf.gather_nd(scores, test)
  best_unseen_scores, best_unseen = top_k(scores, k, seen, excluded_score=-np.inf)
  best_scores, _ = top_k(tf.concat([best_unseen_scores, seen_scores.to_tensor(-np.inf)], 1), k)
  return best_unseen, best_scores, test_scores


def retrieval_metrics(scorer: Scorer, split: Split, ks: Sequence[int] = (10, 50, 100),
                      batch_size: int = 512,
                      candidates: Optional[Sequence[str]] = None) -> dict[str, float]:
  """Protocol A top-k accuracy and protocol B full-ranking metrics on `split.test`.

  `candidates` (item ids) limits the ranking to those items (protocol C's
  held-out items); by default every catalogue item is a candidate.
  """
  ks = sorted(set(ks))
  catalogue = pd.Index(scorer.catalogue)
  num_items = len(catalogue)
  excluded = (np.empty(0, np.int64) if candidates is None else np.flatnonzero(
      ~catalogue.isin(pd.Index(candidates))))
  max_k = min(max(ks), num_items - len(excluded))
  users = pd.Index(pd.unique(split.test[USER_ID].to_numpy(dtype=object))).sort_values()
  seen = _ColumnsByUser(users, catalogue, pd.concat([split.train, split.validation]), True)
  test = _ColumnsByUser(users, catalogue, split.test, False)
  relevant = np.diff(test.offsets)  # test interactions per user, unknown items too
  exclusion = np.zeros(num_items, np.float32)
  exclusion[excluded] = -np.inf

  accuracy_hits = {k: 0 for k in ks}
  sums = {f"{name}@{k}": 0.0 for k in ks for name in FULL_RANKING_METRICS}
  discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
  ideal = np.cumsum(discounts)  # ideal[n - 1]: the DCG of n relevant items ranked first
  for start in range(0, len(users), batch_size):
    stop = min(start + batch_size, len(users))
    scores = tf.convert_to_tensor(scorer.scores(users[start:stop].to_numpy()), tf.float32)
    if len(excluded):
      scores += exclusion
    test_rows, test_columns = test.batch(start, stop)
    known = test_columns >= 0
    test_rows, test_columns = test_rows[known], test_columns[known]
    top, kth_best, test_scores = (tensor.numpy() for tensor in _rank(
        scores, np.stack(seen.batch(start, stop), 1), np.stack([test_rows, test_columns], 1),
        max_k))
    # Protocol A: each test item's score against its user's k-th best score.
    for k in ks:
      accuracy_hits[k] += int(np.sum(test_scores >= kth_best[test_rows, min(k, max_k) - 1]))
    # Protocol B: the seen items removed, the hits among the top max_k.
    row = np.arange(stop - start, dtype=np.int64)[:, None]
    hits = np.isin(row * num_items + top, test_rows * num_items + test_columns)
    batch_relevant = relevant[start:stop]
    for k in ks:
      hits_k = hits[:, :k]
      found = hits_k.any(axis=1)
      dcg = (hits_k * discounts[:hits_k.shape[1]]).sum(axis=1)
      recall, precision = hits_k.sum(axis=1) / batch_relevant, hits_k.sum(axis=1) / k
      sums[f"recall@{k}"] += float(np.sum(recall))
      sums[f"precision@{k}"] += float(np.sum(precision))
      sums[f"f1@{k}"] += float(np.sum(np.divide(2 * precision * recall, precision + recall,
                                                out=np.zeros_like(recall),
                                                where=precision + recall > 0)))
      sums[f"ndcg@{k}"] += float(np.sum(
          dcg / ideal[np.minimum(batch_relevant, hits_k.shape[1]) - 1]))
      sums[f"mrr@{k}"] += float(np.sum(found / (hits_k.argmax(axis=1) + 1)))
      sums[f"hit@{k}"] += float(np.sum(found))
  metrics = {f"top{k}_accuracy": float(accuracy_hits[k] / len(split.test)) for k in ks}
  metrics.update({name: float(total / len(users)) for name, total in sums.items()})
  return metrics


def ranking_metrics(model, data: InteractionData, test: pd.DataFrame,
                    batch_size: int = 512) -> dict[str, float]:
  """Each task's exact metrics on `test` (`Task.evaluate`: RMSE and MAE of
  regression tasks, AUC of binary tasks; a classification report's
  micro and macro F1 for classification tasks), `<task>_<metric>`."""
  evaluated = {name: task for name, task in model.tasks.items()
               if task.exact_metrics and task.reads_pair}
  metrics = {}
  if evaluated:
    predictions = {name: [] for name in evaluated}
    for batch in make_dataset(data, test, model.encoder, batch_size):
      outputs = model(batch)
      for name in evaluated:
        predictions[name].append(outputs[name].numpy())
    metrics.update({f"{name}_{metric}": value for name, task in evaluated.items()
                    for metric, value in task.evaluate(np.concatenate(predictions[name]),
                                                       test).items()})
  for name, report in classification_reports(model, data, test, batch_size).items():
    metrics.update({f"{name}_{metric}": value
                    for metric, value in model.tasks[name].summary(report).items()})
  return metrics


def classification_reports(model, data: InteractionData, test: pd.DataFrame,
                           batch_size: int = 512) -> dict[str, dict]:
  """Per classification or autoencoder task of `model`, scikit-learn's
  classification report (a dict: per value, `precision`, `recall`,
  `f1-score` and `support`; then their averages) of its predictions for
  the distinct users (a user feature's task) or items (an item feature's)
  of `test` (`tfmtl.tasks.classification.Classification.report`)."""
  reports = {}
  for name, task in model.tasks.items():
    if not isinstance(task, Classification):
      continue
    logits, labels = [], []
    for batch in make_dataset(data, task.evaluation_rows(test), model.encoder, batch_size):
      outputs = model(batch)
      logits.append(task.tower_logits(TaskInputs(
          batch, outputs["query_embedding"], outputs["candidate_embedding"], {})).numpy())
      labels.append(batch[task.feature].numpy())
    reports[name] = task.report(np.concatenate(logits), np.concatenate(labels),
                                model.vocabulary.value_names(task.feature))
  return reports


def report_table(report: dict) -> list[str]:
  """A classification report (`classification_reports`) as Markdown table
  lines: one row per value, then the averages.

  >>> print("\\n".join(report_table({"a": {"precision": 1.0, "recall": 0.5, "f1-score": 2 / 3,
  ...                                       "support": 2}, "accuracy": 0.5})))
  | value | precision | recall | F1 | support |
  |---|---|---|---|---|
  | a | 1.000 | 0.500 | 0.667 | 2 |
  | accuracy | | | 0.500 | |
  """
  lines = ["| value | precision | recall | F1 | support |", "|---|---|---|---|---|"]
  for value, scores in report.items():
    if isinstance(scores, dict):
      lines.append(f"| {value} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
                   f"{scores['f1-score']:.3f} | {int(scores['support'])} |")
    else:
      lines.append(f"| {value} | | | {scores:.3f} | |")
  return lines


_DIRECTIONS = {"rmse": "min", "mae": "min", "loss": "min", "recall": "max", "ndcg": "max",
               "mrr": "max", "hit": "max", "precision": "max", "f1": "max", "auc": "max",
               "accuracy": "max"}


def metric_direction(metric: str) -> str:
  """`max` or `min`: which way `metric` (a name `metric_names` gives) gets
  better; "" when its name does not say.

  >>> metric_direction("rating_rmse"), metric_direction("recall@10")
  ('min', 'max')
  """
  return _DIRECTIONS.get(metric.split("@")[0].split("_")[-1], "")


def metric_names(tasks: dict[str, TaskConfig], ks: Sequence[int]) -> list[str]:
  """The metrics `evaluate_model` gives a model with `tasks` at cut-offs `ks`.

  >>> from tfmtl.config import default_tasks
  >>> metric_names(default_tasks(), [10])
  ['top10_accuracy', 'recall@10', 'ndcg@10', 'mrr@10', 'hit@10', 'precision@10', 'f1@10', 'rating_rmse', 'rating_mae', 'like_auc']
  """
  names = []
  if any(task.type == "retrieval" for task in tasks.values()):
    ks = sorted(set(ks))
    names += [f"top{k}_accuracy" for k in ks]
    names += [f"{name}@{k}" for k in ks for name in FULL_RANKING_METRICS]
  for name, task in tasks.items():
    names += [f"{name}_{metric}" for metric in task_type(task.type).exact_metrics]
  return names


def evaluate_model(model, data: InteractionData, split: Split,
                   ks: Sequence[int] = (10, 50, 100), batch_size: int = 512,
                   candidates: Optional[Sequence[str]] = None) -> dict[str, float]:
  """Every retrieval and ranking metric of `model` on `split.test`
  (`candidates`: see `retrieval_metrics`); `batch_size` users, or test
  interactions for the ranking tasks, are scored at a time."""
  metrics = {}
  if any(t.type == "retrieval" for t in model.task_configs.values()):
    metrics.update(retrieval_metrics(ModelScorer(model, data, split.train), split, ks,
                                     batch_size, candidates))
  metrics.update(ranking_metrics(model, data, split.test, batch_size))
  return metrics


def evaluate_popularity(data: InteractionData, split: Split,
                        ks: Sequence[int] = (10, 50, 100),
                        candidates: Optional[Sequence[str]] = None,
                        batch_size: int = 512) -> dict[str, float]:
  """The popularity baseline's retrieval metrics on `split.test`."""
  catalogue = data.items[ITEM_ID].to_numpy(dtype=object)
  return retrieval_metrics(PopularityScorer(split.train, catalogue), split, ks, batch_size,
                           candidates)


def evaluate_ease(data: InteractionData, split: Split, ks: Sequence[int] = (10, 50, 100),
                  candidates: Optional[Sequence[str]] = None, batch_size: int = 512,
                  l2: float = 250.0, max_items: int = 20_000) -> tuple[dict[str, float], str]:
  """EASE's retrieval metrics on `split.test` (Steck 2019: closed-form
  item-item weights fitted on `split.train`, L2 strength `l2`), and "";
  or no metrics and why it was skipped: a catalogue over `max_items` items
  (its item-item inverse grows with their cube), or matrices that would
  not fit in memory."""
  from tfmtl.teachers.ease import fit_baseline, memory_shortfall  # pylint: disable=import-outside-toplevel
  catalogue = data.items[ITEM_ID].to_numpy(dtype=object)
  if len(catalogue) > max_items:
    return {}, (f"{len(catalogue):,} items, more than evaluate.ease_max_items "
                f"({max_items:,})")
  shortfall = memory_shortfall(split.train[USER_ID].nunique() + 1, len(catalogue))
  if shortfall:
    return {}, shortfall
  return retrieval_metrics(fit_baseline(split.train, catalogue, l2), split, ks, batch_size,
                           candidates), ""


def on_validation(split: Split) -> Split:
  """`split` with its validation part as the part evaluated: the test part,
  with only the training items removed from the candidates."""
  return Split(split.train, split.validation[:0], split.validation)


def with_users(split: Split, max_users: int, seed: int) -> Split:
  """`split` for at most `max_users` of its test users, drawn at random
  with `seed` (every user where there are no more; 0: every user): the
  other users' interactions are left out of all three parts.

  >>> import pandas as pd
  >>> from tfmtl.data import Split
  >>> from tfmtl.evaluation import with_users
  >>> frame = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"]})
  >>> len(with_users(Split(frame, frame[:0], frame), 2, seed=0).test)
  2
  """
  users = pd.unique(split.test[USER_ID].to_numpy(dtype=object))
  if not max_users or len(users) <= max_users:
    return split
  drawn = users[np.random.default_rng(seed).choice(len(users), max_users, replace=False)]
  return Split(*(part[ids_in(part[USER_ID], drawn)] for part in split))


class ValidationMetrics(keras.callbacks.Callback):
  """A `fit` callback that adds the learning rate and, every `every` epochs,
  the full-catalogue metrics on `split.validation` (`val_recall@10`, ...)
  to the epoch's logs: the history, the progress line and TensorBoard
  then show them. Nothing is evaluated if the validation split is empty.

  Each user is scored against the whole catalogue, so the metrics cost
  users x items: `max_users` (0: every user) caps the users, drawn once
  with `seed` and then scored every epoch, `batch_size` at a time.
  """

  def __init__(self, data: InteractionData, split: Split, ks: Sequence[int], every: int = 1,
               max_users: int = 0, seed: int = 0, batch_size: int = 512):
    super().__init__()
    self.data, self.ks, self.every, self.batch_size = data, ks, every, batch_size
    self.split = with_users(on_validation(split), max_users, seed)

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    logs["learning_rate"] = last_learning_rate(self.model.optimizer)
    if self.every and (epoch + 1) % self.every == 0 and len(self.split.test):
      metrics = evaluate_model(self.model, self.data, self.split, self.ks, self.batch_size)
      logs.update({f"val_{name}": value for name, value in metrics.items()})
