"""Binds `tf.keras` to Keras 2 (tf_keras), which TensorFlow Recommenders needs.

TFRS refuses Keras 3. TensorFlow picks the Keras behind `tf.keras` from the
`TF_USE_LEGACY_KERAS` variable the first time `tf.keras` is touched, so this
module sets it (unless the user set it) before TensorFlow is used, and fails
with a clear message when it is too late.
"""

import importlib.util
import os
import sys

_HELP = (
    "tfmtl builds on TensorFlow Recommenders, which needs Keras 2 (the tf_keras "
    "package) behind tf.keras. {problem} Either import tfmtl before anything "
    "touches tf.keras, or set the environment variable TF_USE_LEGACY_KERAS=1 "
    "before Python starts (in Colab: `import os; "
    "os.environ['TF_USE_LEGACY_KERAS'] = '1'` in the first cell, then restart).")


def bind_legacy_keras() -> None:
  """Makes `tf.keras` resolve to tf_keras, or raises ImportError saying why.

  TensorFlow itself is not imported: where it is not yet, the variable is
  enough; where it is, `tf.keras` is checked.
  """
  value = os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  if value.strip().lower() not in ("1", "true", "yes"):
    raise ImportError(_HELP.format(
        problem=f"TF_USE_LEGACY_KERAS is set to {value!r}."))
  if importlib.util.find_spec("tf_keras") is None:
    raise ImportError(_HELP.format(
        problem="The tf_keras package is not installed (pip install tf-keras)."))
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    import tf_keras  # pylint: disable=import-outside-toplevel
    if tf.keras.layers.Dense is not tf_keras.layers.Dense:
      raise ImportError(_HELP.format(
          problem="TensorFlow was already imported and tf.keras is bound to "
          "Keras 3 in this process."))


bind_legacy_keras()
