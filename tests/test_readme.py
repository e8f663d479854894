"""The README's Python example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "the README has a Python example"
  result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "rating_rmse" in result.stdout and "recall@10" in result.stdout
  assert (tmp_path / "saved_models" / "movielens_100k" / "1" / "saved_model.pb").is_file()


def _readme_commands() -> list[list[str]]:
  """Every `tfmtl ...` command in the README's shell blocks, as argv."""
  import shlex
  commands = []
  blocks = re.findall(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.S | re.M)
  for language, block in blocks:
    if language not in ("", "bash", "sh"):
      continue
    for line in block.replace("\\\n", " ").splitlines():
      if "tfmtl " not in line:
        continue
      words = shlex.split(line.split(" #")[0].replace("&", " "))
      while words and "=" in words[0] and words[0] != "tfmtl":  # VAR=value prefixes
        words.pop(0)
      if words[:1] == ["tfmtl"]:
        commands.append(words[1:])
  return commands


def test_readme_commands_parse_and_their_configs_load(monkeypatch):
  from tfmtl.cli import _config, _parser
  commands = _readme_commands()
  assert len(commands) >= 15
  monkeypatch.chdir(README.parent)
  for argv in commands:
    args = _parser().parse_args(argv)  # an unknown command or flag exits
    if getattr(args, "config", None) is None or Path(args.config).is_file():
      if hasattr(args, "set"):
        _config(args)  # the config file and every --set key load
