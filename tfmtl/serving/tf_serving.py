"""Files TF Serving reads beside a SavedModel.

- `<version>/assets.extra/tf_serving_warmup_requests`: a TFRecord of
  `PredictionLog`s, one request per signature at batch 1 and batch 8, built
  from the model's own vocabulary (its most frequent user ids, feature
  tokens and catalogue items), so the server's first real request does not
  pay for loading and tracing.
- `<base_path>/models.config`: a `ModelServerConfig` (text) naming every
  model under the base path, for `tensorflow_model_server
  --model_config_file=/models/models.config` with the base path mounted at
  `/models`.
- `<base_path>/batching.config`: example batching parameters for
  `--enable_batching --batching_parameters_file=/models/batching.config`.

Example:

>>> from tensorflow_serving.config import model_server_config_pb2
>>> from google.protobuf import text_format
>>> text = models_config(["movielens_100k"])
>>> config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
>>> config.model_config_list.config[0].base_path
'/models/movielens_100k'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfmtl.data.schema import DOMAIN, HISTORY, HISTORY_SEPARATOR, ITEM_ID, USER_ID
from tfmtl.serving.client import grpc_request

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
WARMUP_BATCHES = (1, 8)
BATCHING_CONFIG = """\
# Example batching parameters: tensorflow_model_server --enable_batching
#   --batching_parameters_file=/models/batching.config
max_batch_size { value: 256 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


def warmup_inputs(module, signature: str, batch: int) -> dict[str, np.ndarray]:
  """Inputs for one signature of a `ServingModule`, from its vocabulary."""
  vocabulary = module.encoder.vocabulary
  def cycled(values, size=batch):
    return np.resize(np.asarray(values, dtype=object), size)
  items = module.catalogue_item_ids.numpy().astype(str).astype(object)
  users = {USER_ID: cycled(vocabulary.user_ids)}
  for name in module.user_signature:
    if name in vocabulary.boundaries:
      cuts = vocabulary.boundaries[name]
      users[name] = cycled(np.array(cuts, np.float32) if cuts else [0.0]).astype(np.float32)
    elif name in vocabulary.tokens:
      users[name] = cycled(vocabulary.tokens[name])
    elif name == HISTORY:
      users[name] = np.full(batch, HISTORY_SEPARATOR.join(items[:3]), dtype=object)
  if signature == "candidate_embedding":
    return {ITEM_ID: cycled(items)}
  if signature == "candidate_embedding_from_features":  # feature values of the vocabulary
    _, inputs = module.signature_specs[signature]
    return {name: (cycled(vocabulary.boundaries.get(name) or [0.0]).astype(np.float32)
                   if spec.dtype == tf.float32 else cycled(vocabulary.tokens.get(name) or [""]))
            for name, spec in inputs.items()}
  domains = {DOMAIN: cycled(vocabulary.domains)} if module.domain_signature else {}
  if signature == "rank":
    return {**users, ITEM_ID: cycled(items, batch * 4).reshape(batch, 4), **domains}
  if signature in ("retrieve", "recommend"):
    return {**users, "k": np.full(batch, 10, np.int32),
            "exclude_item_ids": cycled(items[:2], batch * 2).reshape(batch, 2),
            **(domains if signature == "recommend" else {})}
  return users


def write_warmup_requests(module, export_dir: Path, model_name: str) -> Path:
  """Writes the warm-up file into an export folder (see module doc)."""
  path = Path(export_dir) / WARMUP_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for signature in module.signature_specs:
      for batch in WARMUP_BATCHES:
        request = grpc_request(model_name, signature, warmup_inputs(module, signature, batch))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
  return path


def models_config(model_names: list[str], mount: str = "/models") -> str:
  """A `ModelServerConfig` in text format serving each model's latest version."""
  entries = "".join(f"""  config {{
    name: "{name}"
    base_path: "{mount}/{name}"
    model_platform: "tensorflow"
  }}
""" for name in sorted(model_names))
  return f"model_config_list {{\n{entries}}}\n"


def server_configs(base_path: Path, also: tuple[str, ...] = ()) -> dict[str, str]:
  """`models.config` and `batching.config`'s texts for the models under the
  base path (those with a version folder) and the models named in `also`."""
  base_path = Path(base_path)
  names = {p.name for p in base_path.iterdir()
           if p.is_dir() and any(v.name.isdigit() for v in p.iterdir())} | set(also)
  return {"models.config": models_config(sorted(names)), "batching.config": BATCHING_CONFIG}

