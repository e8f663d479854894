"""The serving client's requests, executed against a real SavedModel the way
TF Serving maps them to tensors, and its parsing of the answers."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tfmtl
from tfmtl.config import ModelConfig
from tfmtl.data import make_dataset
from tfmtl.serving import export_model
from tfmtl.serving.client import (grpc_request, parse_grpc_response, parse_rest_response,
                                  rest_request, rest_url)
from tensorflow_serving.apis import predict_pb2

USERS = {"user_id": ["u1", "nobody"], "taste": ["t1", "t2"], "age": [25.0, 40.0]}
INPUTS = {
    "serving_default": USERS,
    "retrieve": {**USERS, "k": [3, 3], "exclude_item_ids": [["i1", ""], ["i2", "i3"]]},
    "recommend": {**USERS, "k": [2, 2], "exclude_item_ids": [[], []]},
    "rank": {**USERS, "item_id": [["i1", "i2"], ["i3", "no-such-item"]]},
    "query_embedding": USERS,
    "candidate_embedding": {"item_id": ["i1", "no-such-item"]},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_data):
  vocabulary = tfmtl.FeatureVocabulary.build(tiny_data, tiny_data.interactions)
  model = tfmtl.MultiTaskModel(vocabulary, tiny_data.items, ModelConfig(embedding_dim=8))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  model.fit(make_dataset(tiny_data, tiny_data.interactions, model.encoder, 64), verbose=0)
  path = export_model(model, tmp_path_factory.mktemp("saved_models"), "tiny", top_k=4)
  return tf.saved_model.load(str(path))


def _call(served, signature, arrays):
  """What TF Serving does with a request's tensors: cast to the signature's
  dtypes and run it."""
  function = served.signatures[signature]
  specs = function.structured_input_signature[1]
  return {name: value.numpy() for name, value in function(**{
      name: tf.constant(np.asarray(values).reshape(
          (len(values), 0) if len(values) and np.size(values) == 0 else np.shape(values)),
                        specs[name].dtype)
      for name, values in arrays.items()}).items()}


def _decoded(outputs):
  return {name: value.astype(str).astype(object) if value.dtype == object else value
          for name, value in outputs.items()}


def _assert_same(parsed, expected):
  assert set(parsed) == set(expected)
  for name, value in expected.items():
    if value.dtype == object:
      assert parsed[name].tolist() == value.tolist(), name
    else:
      np.testing.assert_allclose(parsed[name], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("signature", list(INPUTS))
def test_rest_rows_and_columns_reach_every_signature(served, signature):
  expected = _decoded(_call(served, signature, INPUTS[signature]))
  # Row format: TF Serving stacks the rows of each input.
  body = json.loads(json.dumps(rest_request(signature, INPUTS[signature])))
  assert body["signature_name"] == signature
  rows = body["instances"]
  outputs = _call(served, signature, {name: [row[name] for row in rows] for name in rows[0]})
  answer = {"predictions": [{name: value[i].tolist() for name, value in _decoded(outputs).items()}
                            for i in range(len(rows))]}
  _assert_same(parse_rest_response(json.loads(json.dumps(answer))), expected)
  # Column format: one array per input, outputs by name.
  body = json.loads(json.dumps(rest_request(signature, INPUTS[signature], row_format=False)))
  outputs = _decoded(_call(served, signature, body["inputs"]))
  answer = {"outputs": {name: value.tolist() for name, value in outputs.items()}}
  _assert_same(parse_rest_response(json.loads(json.dumps(answer))), expected)


@pytest.mark.parametrize("signature", list(INPUTS))
def test_grpc_requests_reach_every_signature(served, signature):
  expected = _decoded(_call(served, signature, INPUTS[signature]))
  request = predict_pb2.PredictRequest.FromString(
      grpc_request("tiny", signature, INPUTS[signature], version=1).SerializeToString())
  assert (request.model_spec.name, request.model_spec.signature_name,
          request.model_spec.version.value) == ("tiny", signature, 1)
  outputs = _call(served, signature, {name: tf.make_ndarray(proto)
                                      for name, proto in request.inputs.items()})
  response = predict_pb2.PredictResponse()
  for name, value in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
  parsed = parse_grpc_response(predict_pb2.PredictResponse.FromString(
      response.SerializeToString()))
  _assert_same(parsed, expected)


def test_bad_requests_and_errors_are_named():
  with pytest.raises(ValueError, match="different batch sizes"):
    rest_request("retrieve", {"user_id": ["a", "b"], "k": [1]})
  with pytest.raises(ValueError, match="TF Serving answered an error: bad input"):
    parse_rest_response({"error": "bad input"})
  assert rest_url("localhost:8501", "m", 3) == "http://localhost:8501/v1/models/m/versions/3:predict"
