"""Requests to a TF Serving model, and its answers, for every signature.

TF Serving takes a signature's inputs over REST, in the row format
(`instances`: one JSON object per batch row) or the column format
(`inputs`: one JSON array per input), or over gRPC as a `PredictRequest`
of tensors. These helpers build each from a mapping of input name -> array
(first dimension: the batch) and turn the answers back into numpy arrays by
output name. Sending is left to any HTTP or gRPC client:

    curl -d @request.json localhost:8501/v1/models/movielens_100k:predict
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel("localhost:8500"))
    response = stub.Predict(grpc_request("movielens_100k", "recommend", inputs))

Example:

>>> inputs = {"user_id": ["42"], "k": [2], "exclude_item_ids": [["1", ""]]}
>>> rest_request("retrieve", inputs)
{'signature_name': 'retrieve', 'instances': [{'user_id': '42', 'k': 2, 'exclude_item_ids': ['1', '']}]}
>>> rest_request("retrieve", inputs, row_format=False)["inputs"]["k"]
[2]
>>> parse_rest_response({"predictions": [{"item_ids": ["7", "3"], "scores": [0.9, 0.8]}]})
{'item_ids': array([['7', '3']], dtype=object), 'scores': array([[0.9, 0.8]])}
>>> request = grpc_request("movielens_100k", "retrieve", inputs)
>>> request.model_spec.signature_name, sorted(request.inputs)
('retrieve', ['exclude_item_ids', 'k', 'user_id'])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

def rest_url(host: str, model_name: str, version: Optional[int] = None) -> str:
  """The REST predict URL, e.g. `http://localhost:8501/v1/models/m:predict`."""
  versioned = f"/versions/{version}" if version else ""
  return f"http://{host}/v1/models/{model_name}{versioned}:predict"


def rest_request(signature: str, inputs: Mapping[str, Any],
                 row_format: bool = True) -> dict:
  """A REST predict body: `instances` (rows) or, with `row_format=False`,
  `inputs` (columns)."""
  columns = {name: _plain(np.asarray(values)) for name, values in inputs.items()}
  if not row_format:
    return {"signature_name": signature, "inputs": columns}
  sizes = {name: len(values) for name, values in columns.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f"inputs have different batch sizes: {sizes}")
  rows = [{name: values[row] for name, values in columns.items()}
          for row in range(next(iter(sizes.values()), 0))]
  return {"signature_name": signature, "instances": rows}


def parse_rest_response(body: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Output name -> array from a REST answer (`predictions` or `outputs`)."""
  if "error" in body:
    raise ValueError(f"TF Serving answered an error: {body['error']}")
  if "outputs" in body:
    outputs = body["outputs"]
    return {name: _array(values) for name, values in outputs.items()} \
        if isinstance(outputs, dict) else {"output": _array(outputs)}
  rows = body["predictions"]
  if rows and isinstance(rows[0], dict):
    return {name: _array([row[name] for row in rows]) for name in rows[0]}
  return {"output": _array(rows)}


def grpc_request(model_name: str, signature: str, inputs: Mapping[str, Any],
                 version: Optional[int] = None) -> predict_pb2.PredictRequest:
  """A gRPC `PredictRequest` for one signature (numbers sent as a tfmtl
  export takes them: floats as float32, integers as int32)."""
  request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
      name=model_name, signature_name=signature))
  if version:
    request.model_spec.version.value = version
  for name, values in inputs.items():
    array = np.asarray(values)
    if array.dtype.kind in "OU":
      array = array.astype(bytes)
    elif array.dtype.kind in "iu":
      array = array.astype(np.int32)
    elif array.dtype.kind == "f":
      array = array.astype(np.float32)
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
  return request


def parse_grpc_response(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
  """Output name -> array from a `PredictResponse` (strings decoded)."""
  outputs = {}
  for name, proto in response.outputs.items():
    array = tf.make_ndarray(proto)
    outputs[name] = (np.vectorize(bytes.decode, otypes=[object])(array)
                     if array.dtype == object else array)
  return outputs


def _plain(array: np.ndarray) -> list:
  """JSON-ready values: strings as str, numbers as Python numbers."""
  if array.dtype.kind == "S" or (array.dtype == object and array.size and
                                 isinstance(array.flat[0], bytes)):
    array = np.vectorize(bytes.decode, otypes=[object])(array)
  return array.tolist()


def _array(values) -> np.ndarray:
  array = np.asarray(values)
  return array.astype(object) if array.dtype.kind == "U" else array
