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
