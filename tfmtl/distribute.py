"""One place for `tf.distribute`: the strategy that trains, from the config.

`train.strategy` names it:

- `auto`: a TPU where one is found, else every GPU where there are several,
  else one device: what a Colab notebook wants on any runtime.
- `default`: one device (TensorFlow's default strategy).
- `mirrored`: `MirroredStrategy` over `train.devices` (default: every GPU,
  else the CPU).
- `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster and this
  process's task come from the `TF_CONFIG` environment variable.
- `tpu`: `TPUStrategy` on the TPU `train.tpu` names ("" finds Colab's or
  the local one). Where no TPU is found it says so in the log and trains
  with the default strategy, so one notebook runs anywhere.

`train.batch_size` is the global batch: Keras splits each batch across the
replicas, every task averages its loss over the global batch
(`tf.nn.compute_average_loss`) and regularization is scaled by the number
of replicas, so one config trains the same model on 1 or N replicas at the
same learning rate. Under `multi_worker` every worker runs the same command;
the chief writes the run (`is_chief`), and `<run_dir>.checkpoints` must be
on storage every worker reads. The retrieval task's in-batch softmax sees the whole
global batch (`all_replicas_own_first`; TFRS's own task sees only its
replica's share), unless the task sets `cross_replica_negatives: false`.

Example:

>>> strategy = make_strategy("default")
>>> strategy.num_replicas_in_sync
1
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from typing import Sequence

import tensorflow as tf

from tfmtl.config import STRATEGIES, ConfigError

logger = logging.getLogger("tfmtl")


def make_strategy(name: str, devices: Sequence[str] = (), tpu: str = ""
                  ) -> tf.distribute.Strategy:
  """The `tf.distribute.Strategy` called `name` (see module doc): one per
  process for each set of arguments, as TensorFlow wants (a second
  MirroredStrategy over the same devices breaks the first's collectives)."""
  return _strategy(name, tuple(devices), tpu)


@functools.lru_cache(maxsize=None)
def _strategy(name: str, devices: tuple[str, ...], tpu: str) -> tf.distribute.Strategy:
  if name == "auto":
    if _tpu_resolver(tpu, quiet=True):
      return _strategy("tpu", devices, tpu)
    gpus = tf.config.list_logical_devices("GPU")
    logger.info("train.strategy: auto: no TPU, %d GPU(s): %s", len(gpus),
                "mirrored" if len(gpus) > 1 else "default")
    return _strategy("mirrored" if len(gpus) > 1 else "default", devices, tpu)
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(list(devices) or None)
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ConfigError("train.strategy: multi_worker needs the TF_CONFIG environment "
                        "variable (the cluster's workers and this process's task)")
    try:
      json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as error:
      raise ConfigError(f"TF_CONFIG: not JSON ({error})") from None
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = _tpu_resolver(tpu)
    if resolver is None:
      return tf.distribute.get_strategy()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ConfigError(f"train.strategy: {name!r} is not one of {', '.join(STRATEGIES)}")


def _tpu_resolver(tpu: str, quiet: bool = False):
  """The TPU's cluster resolver, or None (logged unless `quiet`) where none is found."""
  try:
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu)
  except (ValueError, tf.errors.NotFoundError) as error:
    if not quiet:
      logger.warning("train.strategy: tpu, but no TPU was found (%s); training with "
                     "the default strategy", error)
    return None


def all_replicas_own_first(*tensors: tf.Tensor) -> list[tf.Tensor]:
  """Each tensor's rows from every replica, this replica's first.

  Called in a replica's step, it turns the replica's in-batch candidates
  into the global batch's while keeping row i the positive of query i,
  which is where TFRS's `Retrieval` task looks for it. Gradients flow back
  to every replica. With one replica the tensors come back as they are.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return list(tensors)
  tensors = [tf.identity(tensor) for tensor in tensors]  # placed (`replica_device_scope`)
  sizes = context.all_gather(tf.shape(tensors[0])[:1], axis=0)  # [replicas]
  offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
  return [tf.roll(context.all_gather(tensor, axis=0), -offset, axis=0) for tensor in tensors]


def agreed_logs(means: dict, shares: dict) -> dict:
  """A step's logs, the same on every replica: the replicas' `means` (of
  their own examples) averaged, their `shares` (of a global mean) summed.

  Keras then reports the first replica's (`distribute_reduction_method`
  "first"), which is right under every strategy.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return {**means, **shares}
  placed = lambda logs: {name: tf.identity(value) for name, value in logs.items()}  # noqa: E731
  return {**context.all_reduce(tf.distribute.ReduceOp.MEAN, placed(means)),
          **context.all_reduce(tf.distribute.ReduceOp.SUM, placed(shares))}


def replica_device_scope():
  """A device scope for a replica's step: under `multi_worker` with one device
  per worker, TensorFlow leaves the step's ops unplaced, and `all_gather`
  refuses tensors without a device."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return contextlib.nullcontext()
  devices = context.strategy.extended.worker_devices
  return tf.device(devices[0]) if len(devices) == 1 else contextlib.nullcontext()


def is_chief() -> bool:
  """Whether this process writes the run: the only process, or TF_CONFIG's
  chief (worker 0 when the cluster has no chief)."""
  config = json.loads(os.environ.get("TF_CONFIG") or "{}")
  task = config.get("task", {})
  if task.get("type") in (None, "chief"):
    return True
  return (task["type"] == "worker" and int(task.get("index", 0)) == 0
          and "chief" not in config.get("cluster", {}))
