"""Files and folders written whole or not at all: written at a temporary
path beside the target, then renamed, so a crash never leaves half a file
or folder for a reader, and a failed write leaves nothing behind.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_text(folder / "metrics.json", "{}").read_text()
'{}'
>>> run = write_folder(folder / "run", lambda staging: (staging / "a.txt").write_text("a"))
>>> sorted(p.name for p in folder.iterdir())  # no temporary file or folder left
['metrics.json', 'run']
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional


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


def write_folder(folder: str | Path, writer: Callable[[Path], object],
                 replaceable: Optional[Callable[[Path], bool]] = None) -> Path:
  """Has `writer` fill a new staging folder beside `folder`, then puts it in
  place of `folder`; returns `folder`.

  An existing `folder` is replaced only if `replaceable(folder)` says so
  (by default it never is: `FileExistsError`). If writing fails, the
  staging folder is removed and `folder` is left as it was.
  """
  folder = Path(folder)
  if folder.exists() and not (replaceable and replaceable(folder)):
    raise FileExistsError(f"{folder}: exists and is not what tfmtl writes there, so tfmtl "
                          "will not replace it; move it away or choose another path")
  staging = folder.with_name(f".{folder.name}.tmp")
  shutil.rmtree(staging, ignore_errors=True)
  try:
    staging.mkdir(parents=True)
    writer(staging)
    replace_folder(staging, folder)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return folder


def replace_folder(staging: Path, folder: Path) -> None:
  """Renames `staging` to `folder`, moving an existing `folder` aside first
  and removing it once the new one is in place (restored if that fails)."""
  old = folder.with_name(f".{folder.name}.old")
  shutil.rmtree(old, ignore_errors=True)
  if folder.exists():
    folder.rename(old)
  try:
    staging.rename(folder)
  except OSError:
    if old.exists():
      old.rename(folder)
    raise
  shutil.rmtree(old, ignore_errors=True)
