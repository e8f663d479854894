"""`import tfmtl` binds Keras 2 itself, and says clearly when it cannot."""

import subprocess
import sys


def _python(code: str, **env) -> subprocess.CompletedProcess:
  import os
  environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  environment.update(env)
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=environment, timeout=300)


def test_import_first_binds_tf_keras_to_keras_2():
  result = _python("import tfmtl, tensorflow as tf, tf_keras;"
                   "print(tf.keras.layers.Dense is tf_keras.layers.Dense)")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith("True")


def test_import_after_keras_3_is_bound_fails_with_a_clear_message():
  result = _python("import tensorflow as tf; tf.keras.layers.Dense; import tfmtl")
  assert result.returncode != 0
  assert "tf.keras is bound to Keras 3" in result.stderr
  assert "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_import_with_keras_3_requested_explicitly_fails_with_a_clear_message():
  result = _python("import tfmtl", TF_USE_LEGACY_KERAS="0")
  assert result.returncode != 0
  assert "TF_USE_LEGACY_KERAS is set to '0'" in result.stderr


def test_the_command_line_parses_without_starting_tensorflow():
  """`tfmtl --help` answers at once: `import tfmtl` and the parser leave
  TensorFlow unimported (it starts when a command needs it)."""
  result = _python("import sys\nfrom tfmtl import cli\ntry:\n  cli.main(['--help'])\n"
                   "except SystemExit:\n  pass\nprint('tensorflow' in sys.modules)")
  assert result.returncode == 0, result.stderr
  assert "usage: tfmtl" in result.stdout and result.stdout.strip().endswith("False")
  assert result.stderr == ""  # no TensorFlow start-up lines
