"""Files written whole or not at all: a temporary file beside the target,
then a rename, so a crash never leaves half a file for a reader.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_text(folder / "metrics.json", "{}").read_text()
'{}'
>>> sorted(p.name for p in folder.iterdir())  # no temporary file left
['metrics.json']
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def write(path: str | Path, writer: Callable[[Path], object]) -> Path:
  """Has `writer` write the file at a temporary path, then renames it to
  `path`; returns the path (e.g. `write(p, lambda t: frame.to_parquet(t))`)."""
  path = Path(path)
  staging = path.with_name(f".{path.name}.tmp")
  try:
    writer(staging)
    staging.replace(path)
  finally:
    staging.unlink(missing_ok=True)
  return path


def write_text(path: str | Path, text: str) -> Path:
  """Writes `text` to `path` atomically; returns the path."""
  return write(path, lambda staging: staging.write_text(text))
