"""The tf.data service: input prepared on other processes or machines.

`tfmtl data-service` runs a dispatcher and its workers (`serve`); a training
config that sets `train.data_service: grpc://host:port` sends its input
pipeline there (`served`), and the trainer only receives finished batches.
It needs `train.input: tfrecord`: the dispatcher hands out the input's
files to its workers as they ask, so each example is prepared once per
epoch however many service workers there are, and the pipeline it is sent
names files rather than holding the data.

Example (a dispatcher and a worker in this process):

>>> import tensorflow as tf
>>> dispatcher, workers = start_servers(port=0, num_workers=1)
>>> dataset = served(tf.data.Dataset.range(6).batch(2), dispatcher.target)
>>> sorted(int(value) for batch in dataset for value in batch)
[0, 1, 2, 3, 4, 5]
"""

from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

logger = logging.getLogger("tfmtl")

_service = tf.data.experimental.service


def served(dataset: tf.data.Dataset, address: str) -> tf.data.Dataset:
  """`dataset`, prepared by the tf.data service at `address` (`grpc://host:port`)."""
  dataset = dataset.apply(_service.distribute(
      processing_mode=_service.ShardingPolicy.DYNAMIC, service=address))
  options = tf.data.Options()  # the service splits the work; tf.distribute must not again
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return dataset.with_options(options)


def start_servers(port: int = 5050, num_workers: int = 1, dispatcher: Optional[str] = None,
                  work_dir: Optional[str] = None
                  ) -> tuple[Optional[_service.DispatchServer], list[_service.WorkerServer]]:
  """Starts a dispatcher on `port` (unless `dispatcher` names one elsewhere,
  `host:port`) and `num_workers` workers that serve it; returns them.

  With `work_dir`, the dispatcher keeps its state there (the pipelines it
  was sent, a journal of its jobs), and a restarted one resumes from it.
  """
  server = None
  if dispatcher is None:
    server = _service.DispatchServer(_service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None))
    dispatcher = server.target.split("://")[1]
  workers = [_service.WorkerServer(_service.WorkerConfig(dispatcher_address=dispatcher))
             for _ in range(num_workers)]
  logger.info("tf.data service: dispatcher %s, %d worker(s)", dispatcher, num_workers)
  return server, workers


def serve(port: int = 5050, num_workers: int = 1, dispatcher: Optional[str] = None,
          work_dir: Optional[str] = None) -> None:
  """Runs the servers of `start_servers` until the process is stopped."""
  server, workers = start_servers(port, num_workers, dispatcher, work_dir)
  (server or workers[0]).join()
