"""The Colab notebook runs headless, top to bottom, on this machine's CPU."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab_quickstart.ipynb"


def _stdout(cell) -> str:
  return "".join(output.get("text", "") for output in cell.get("outputs", [])
                 if output.get("name") == "stdout")


@pytest.mark.slow
def test_the_colab_notebook_trains_evaluates_and_exports(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  install, imports, _, metrics, export = code
  assert _stdout(install).startswith("tfmtl: ")  # installed here: nothing to do
  assert _stdout(imports).startswith("_DefaultDistributionStrategy: 1 replica(s)")
  recall = float(_stdout(metrics).split("recall@10")[1].split()[0])
  assert recall > 0.05  # random ranking: about 0.006 (10 of 1,682 movies)
  assert "rating_rmse" in _stdout(metrics)
  assert (tmp_path / "saved_models" / "movielens_100k" / "1" / "saved_model.pb").is_file()
  top = _stdout(export).splitlines()[-1]
  assert len(top.strip("[]").split()) == 5 and "b'50'" not in top  # 5 ids, excluded one out
