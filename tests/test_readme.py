"""The README's examples run as written."""

import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
  """The Python blocks, run as one script in this process (as a notebook
  would run them), from an empty folder."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "the README has a Python example"
  monkeypatch.chdir(tmp_path)
  exec(compile("\n".join(blocks), str(README), "exec"), {"__name__": "__main__"})
  stdout = capsys.readouterr().out
  assert "rating_rmse" in stdout and "recall@10" in stdout
  assert (tmp_path / "saved_models" / "movielens_100k" / "1" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_readme_command_line_block_runs_in_order(tmp_path, tfmtl_cli):
  """The block under "The command line", each command as written, in
  order: training is cut to one epoch, and `new_movies.csv` is made. Each
  prints what it did; `validate` refuses a folder that is not an export."""
  section = README.read_text().split("## The command line", 1)[1]
  block = re.search(r"^```\n(.*?)^```$", section, re.S | re.M).group(1)
  shutil.copytree(README.parent / "configs", tmp_path / "configs")
  pd.DataFrame({"item_id": ["new1", "new2"], "title": ["Arrival", "Paddington 2"],
                "genres": ["Drama|Sci-Fi", "Children's|Comedy"], "year": [2016, 2017]}
               ).to_csv(tmp_path / "new_movies.csv", index=False)
  commands = [_tfmtl_argv(line) for line in block.splitlines() if line.strip()]
  assert [argv[0] for argv in commands] == ["data", "encode-items", "train", "evaluate",
                                            "export", "validate", "run", "add-items"]
  stdout = {}
  for argv in commands:
    one_epoch = ["--set", "train.epochs=1"] if argv[0] in ("train", "run") else []
    result = tfmtl_cli(*argv, *one_epoch, cwd=tmp_path)
    assert result.returncode == 0, f"tfmtl {shlex.join(argv)}:\n{result.stderr[-3000:]}"
    stdout[argv[0]] = result.stdout
  assert "ndcg@10" in stdout["evaluate"]
  versions = tmp_path / "saved_models" / "movielens_100k"
  assert stdout["export"].strip().endswith("saved_models/movielens_100k/1")
  assert stdout["validate"].count("\nok ") == 4
  assert "saved_models/movielens_100k/1: ready" in stdout["validate"]
  assert sorted(p.name for p in versions.iterdir()) == ["1", "2", "3"]  # export, run, add-items
  refused = tfmtl_cli("validate", "--run", "runs/movielens_100k", "--export", "runs",
                      cwd=tmp_path)
  assert refused.returncode == 2 and "runs: no saved_model.pb" in refused.stderr
  catalogue = pd.read_parquet(tmp_path / "runs" / "movielens_100k" / "catalogue.parquet")
  assert len(catalogue) == 1682 + 2 and {"new1", "new2"} <= set(catalogue["item_id"])
  _send_the_readme_requests(versions / "1")


def _send_the_readme_requests(export) -> None:
  """The REST requests under "## Serving", each given to its signature as
  TF Serving would (row format: one object per batch row); `retrieve`'s
  answer has the documented outputs and shapes."""
  import json
  import numpy as np
  import tensorflow as tf
  section = README.read_text().split("## Serving", 1)[1]
  bodies = [json.loads(body) for body in re.findall(r"^curl -d '(.*?)' ", section, re.M)]
  assert len(bodies) == 6
  served = tf.saved_model.load(str(export)).signatures
  answers = {}
  for body in bodies:
    name = body.get("signature_name", "serving_default")
    specs = served[name].structured_input_signature[1]
    rows = body["instances"]
    assert set(rows[0]) == set(specs), name  # every input, nothing else
    inputs = {key: tf.constant(np.array([row[key] for row in rows],
                                        dtype=object if spec.dtype == tf.string
                                        else spec.dtype.as_numpy_dtype))
              for key, spec in specs.items()}
    answers[name] = served[name](**inputs)
  example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
  documented = example["predictions"][0]
  assert set(answers["retrieve"]) == set(documented)
  assert all(answers["retrieve"][key].shape == (1, len(value)) for key, value in documented.items())


def _readme_commands() -> list[list[str]]:
  """Every `tfmtl ...` command in the README's shell blocks, as argv."""
  commands = []
  blocks = re.findall(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.S | re.M)
  for language, block in blocks:
    if language not in ("", "bash", "sh"):
      continue
    for line in block.replace("\\\n", " ").splitlines():
      argv = _tfmtl_argv(line) if "tfmtl " in line else None
      if argv is not None:
        commands.append(argv)
  return commands


def _tfmtl_argv(line: str):
  """A shell line's `tfmtl` arguments (comment, `&` and VAR=value prefixes
  dropped), or None if the line runs something else."""
  words = shlex.split(line.split(" #")[0].replace("&", " "))
  while words and "=" in words[0] and words[0] != "tfmtl":  # VAR=value prefixes
    words.pop(0)
  return words[1:] if words[:1] == ["tfmtl"] else None


def test_readme_commands_parse_and_their_configs_load(monkeypatch):
  from tfmtl.cli import _config, _parser
  commands = _readme_commands()
  assert len(commands) >= 15
  monkeypatch.chdir(README.parent)
  for argv in commands:
    args = _parser().parse_args(argv)  # an unknown command or flag exits
    if all(Path(path).is_file() for path in getattr(args, "config", [])):
      if hasattr(args, "set"):
        _config(args)  # the config file and every --set key load
