"""One place for `tf.distribute`: the strategy that trains, from the config.

`train.strategy` names it:

- `auto`: a TPU where one is found, else every GPU where there are several,
  else one device: what a Colab notebook wants on any runtime.
- `default`: one device (TensorFlow's default strategy).
- `mirrored`: `MirroredStrategy` over `train.devices` (default: every GPU,
  else the CPU).
- `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster and this
  process's task come from the `TF_CONFIG` environment variable.
- `parameter_server`: `ParameterServerStrategy`, run from TF_CONFIG's chief
  (`tfmtl train`), with each worker and parameter server a `tfmtl worker`
  process. Variables of at least `train.shard_min_bytes` (the big embedding
  tables) are split across the parameter servers; workers train
  asynchronously, each on whole batches.
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
import math
import os
from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmtl.config import ConfigError, TrainConfig

logger = logging.getLogger("tfmtl")

#: `train.strategy`'s values (see `make_strategy`).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "parameter_server", "tpu")
#: Steps per call into TensorFlow on one replica, `train.steps_per_execution` unset.
DEFAULT_STEPS_PER_EXECUTION = 32


def make_strategy(name: str, devices: Sequence[str] = (), tpu: str = "",
                  shard_min_bytes: int = 256 << 10) -> tf.distribute.Strategy:
  """The `tf.distribute.Strategy` called `name` (see module doc): one per
  process for each set of arguments, as TensorFlow wants (a second
  MirroredStrategy over the same devices breaks the first's collectives)."""
  return _strategy(name, tuple(devices), tpu, shard_min_bytes)


@functools.lru_cache(maxsize=None)
def _strategy(name: str, devices: tuple[str, ...], tpu: str, shard_min_bytes: int
              ) -> tf.distribute.Strategy:
  if name == "auto":
    if _tpu_resolver(tpu, quiet=True):
      return _strategy("tpu", devices, tpu, shard_min_bytes)
    gpus = tf.config.list_logical_devices("GPU")
    logger.info("train.strategy: auto: no TPU, %d GPU(s): %s", len(gpus),
                "mirrored" if len(gpus) > 1 else "default")
    return _strategy("mirrored" if len(gpus) > 1 else "default", devices, tpu,
                     shard_min_bytes)
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(list(devices) or None)
  if name == "multi_worker":
    _log_waiting(_tf_config(f"train.strategy: {name}"))
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "parameter_server":
    tf_config = _tf_config(f"train.strategy: {name}")
    task = tf_config.get("task", {}).get("type")
    if task != "chief":
      raise ConfigError(f"TF_CONFIG: task type {task!r}: under parameter_server `tfmtl train` "
                        "runs on the chief; worker and ps tasks run `tfmtl worker`")
    servers = len(tf_config.get("cluster", {}).get("ps", []))
    if not servers:
      raise ConfigError("TF_CONFIG: parameter_server needs 'ps' tasks in its cluster")
    _log_waiting(tf_config)
    return tf.distribute.ParameterServerStrategy(
        tf.distribute.cluster_resolver.TFConfigClusterResolver(),
        variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=shard_min_bytes, max_shards=servers))
  if name == "tpu":
    resolver = _tpu_resolver(tpu)
    if resolver is None:
      return tf.distribute.get_strategy()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ConfigError(f"train.strategy: {name!r} is not one of {', '.join(STRATEGIES)}")


def _tf_config(needed_by: str) -> dict:
  """TF_CONFIG, parsed; a ConfigError names what is missing and what needs it."""
  if "TF_CONFIG" not in os.environ:
    raise ConfigError(f"{needed_by} needs the TF_CONFIG environment variable (the "
                      "cluster's tasks and this process's task)")
  try:
    return json.loads(os.environ["TF_CONFIG"])
  except json.JSONDecodeError as error:
    raise ConfigError(f"TF_CONFIG: not JSON ({error})") from None


def _log_waiting(tf_config: dict) -> None:
  """Says what the strategy is about to wait for: every task of the cluster."""
  task = tf_config.get("task", {})
  logger.info("%s %s of the cluster %s: waiting until every task is up",
              task.get("type"), task.get("index"), tf_config.get("cluster"))


def serve_cluster_task() -> None:
  """Runs this process as TF_CONFIG's `worker` or `ps` task of a
  parameter-server cluster until it is stopped (`tfmtl worker`)."""
  task = _tf_config("`tfmtl worker`").get("task", {})
  if task.get("type") not in ("worker", "ps"):
    raise ConfigError(f"TF_CONFIG: task type {task.get('type')!r}: `tfmtl worker` runs a "
                      "worker or ps task; the chief runs `tfmtl train`")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  logger.info("%s %d of %s: serving", resolver.task_type, resolver.task_id,
              resolver.cluster_spec().as_dict())
  tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                       task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc",
                       start=True).join()


def training_input(strategy: tf.distribute.Strategy, batches: Callable[..., tf.data.Dataset],
                   num_examples: int, batch_size: int, tpu_embedding: bool = False,
                   steps_per_execution: int = 1, first_step: Optional[int] = None
                   ) -> tuple[Any, dict]:
  """What `fit` takes under `strategy`, as (x, keyword arguments).

  `batches(input_context, drop_remainder)` makes one epoch of shuffled
  batches or, given `first_step`, the batches of every epoch left to train
  (`tfmtl.data.pipeline.batched_dataset`'s `epochs`), of which `fit` skips
  the first `first_step` (those a resumed epoch already trained on) and
  takes `steps_per_epoch` an epoch.

  The batches have a fixed size on a TPU, and under several replicas with
  `steps_per_execution` > 1: TensorFlow's collectives (e.g. Keras
  gathering sparse gradients) fail in a multi-step loop whose last batch
  is smaller. A model with TPU embedding tables gets them distributed on
  the host (`host_fed`). Under ParameterServerStrategy, `fit` takes a
  `DatasetCreator` that each worker calls with its input context,
  repeated, and `steps_per_epoch`.
  """
  if isinstance(strategy, tf.distribute.ParameterServerStrategy):
    creator = keras.utils.experimental.DatasetCreator(
        lambda context: batches(context, False).repeat())
    return creator, {"steps_per_epoch": math.ceil(num_examples / batch_size)}
  if on_tpu(strategy) and tpu_embedding:
    return (host_fed(strategy, batches(None, True).repeat()),
            {"steps_per_epoch": num_examples // batch_size})
  fixed_size = _fixed_size(strategy, steps_per_execution)
  if first_step is None:
    return batches(None, fixed_size), {}
  return batches(None, fixed_size).skip(first_step), {"steps_per_epoch": epoch_steps(
      strategy, num_examples, batch_size, steps_per_execution)}


def _fixed_size(strategy: tf.distribute.Strategy, steps_per_execution: int) -> bool:
  return on_tpu(strategy) or (strategy.num_replicas_in_sync > 1 and steps_per_execution > 1)


def epoch_steps(strategy: tf.distribute.Strategy, num_examples: int, batch_size: int,
                steps_per_execution: int = 1) -> int:
  """The training steps of an epoch of `training_input`'s batches (where
  they must have a fixed size, the last, smaller batch is dropped)."""
  if _fixed_size(strategy, steps_per_execution):
    return num_examples // batch_size
  return math.ceil(num_examples / batch_size)


def steps_per_execution(strategy: tf.distribute.Strategy, train: TrainConfig) -> int:
  """Training steps per call into TensorFlow (Keras `compile`) under `strategy`.

  `train.steps_per_execution` where set. Unset, 32 on one replica or a TPU:
  it saves Keras' per-step call, which is much of a small model's step,
  and it trains the same model. Unset, 1 under several
  GPU or worker replicas (several steps a call would drop each epoch's
  last, smaller batch; `training_input`), under parameter servers, and with
  `tfrecord` input, alone or through the tf.data service (Keras cannot
  count its batches).

  >>> steps_per_execution(make_strategy("default"), TrainConfig())
  32
  >>> steps_per_execution(make_strategy("default"), TrainConfig(steps_per_execution=1))
  1
  """
  if train.steps_per_execution is not None:
    return train.steps_per_execution
  several_replicas = strategy.num_replicas_in_sync > 1 and not on_tpu(strategy)
  if (several_replicas or train.input == "tfrecord"
      or isinstance(strategy, tf.distribute.ParameterServerStrategy)):
    return 1
  return DEFAULT_STEPS_PER_EXECUTION


def input_readers(strategy_name: str) -> int:
  """How many processes read training input under the strategy called
  `strategy_name`, each its own files: TF_CONFIG's chief and workers under
  `multi_worker`, its workers under `parameter_server`, else 1. Read from
  TF_CONFIG alone, so a config can be checked before any strategy exists."""
  if strategy_name not in ("multi_worker", "parameter_server"):
    return 1
  cluster = _tf_config(f"train.strategy: {strategy_name}").get("cluster", {})
  jobs = ("worker",) if strategy_name == "parameter_server" else ("chief", "worker")
  return sum(len(cluster.get(job, [])) for job in jobs) or 1


def host_fed(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
  """`dataset` distributed with its batches left on the host, where the TPU
  embedding engine reads the ids (TFRS's `TPUEmbedding` doc); `fit` takes
  it with `steps_per_epoch`."""
  return strategy.experimental_distribute_dataset(
      dataset, tf.distribute.InputOptions(experimental_fetch_to_device=False))


def on_tpu(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """Whether `strategy` (by default the current one) runs on TPU cores."""
  strategy = strategy or tf.distribute.get_strategy()
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def _tpu_resolver(tpu: str, quiet: bool = False):
  """The TPU's cluster resolver, or None (logged unless `quiet`) where none is found."""
  try:
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu)
  except (ValueError, tf.errors.NotFoundError) as error:
    if not quiet:
      logger.warning("train.strategy: tpu, but no TPU was found (%s); training with "
                     "the default strategy", error)
    return None


def all_replicas_own_first(*tensors: Optional[tf.Tensor]) -> list[Optional[tf.Tensor]]:
  """Each tensor's rows from every replica, this replica's first (None
  stays None).

  Called in a replica's step, it turns the replica's in-batch candidates
  into the global batch's while keeping row i the positive of query i,
  which is where the retrieval task (`tfmtl.tasks.InBatchSoftmax`, as TFRS's
  `Retrieval`) looks for it. Gradients flow back to every replica. With one
  replica the tensors come back as they are.
  """
  context = _several_replicas()
  if context is None:
    return list(tensors)
  sizes = context.all_gather(tf.shape(tensors[0])[:1], axis=0)  # [replicas]
  offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
  return [None if tensor is None else
          tf.roll(context.all_gather(_placed(tensor), axis=0), -offset, axis=0)
          for tensor in tensors]


def agreed_logs(means: dict) -> dict:
  """A step's logs, the same on every replica: the replicas' `means` (of
  their own examples) averaged.

  Keras then reports the first replica's (`distribute_reduction_method`
  "first"), which is right under every strategy.
  """
  context = _several_replicas()
  if context is None:
    return means
  return context.all_reduce(tf.distribute.ReduceOp.MEAN, _placed(means))


def replica_device_scope():
  """A device scope for a replica's step: under `multi_worker` with one device
  per worker, TensorFlow leaves the step's ops unplaced, and `all_gather`
  refuses tensors without a device."""
  context = _several_replicas()
  devices = context.strategy.extended.worker_devices if context else ()
  return tf.device(devices[0]) if len(devices) == 1 else contextlib.nullcontext()


def _several_replicas() -> Optional[tf.distribute.ReplicaContext]:
  """The replica context of a step run on several replicas, else None."""
  context = tf.distribute.get_replica_context()
  return context if context is not None and context.num_replicas_in_sync > 1 else None


def _placed(tensors):
  """`tensors` (a structure) through `tf.identity`, so they carry the current
  device: step inputs and metric reads have none, which collectives refuse."""
  return tf.nest.map_structure(tf.identity, tensors)


def is_chief() -> bool:
  """Whether this process writes the run: the only process, or TF_CONFIG's
  chief (worker 0 when the cluster has no chief)."""
  config = json.loads(os.environ.get("TF_CONFIG") or "{}")
  task = config.get("task", {})
  if task.get("type") in (None, "chief"):
    return True
  return (task["type"] == "worker" and int(task.get("index", 0)) == 0
          and "chief" not in config.get("cluster", {}))
