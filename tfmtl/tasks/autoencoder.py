"""`autoencoder`: the candidate embedding as the bottleneck of an item autoencoder.

A head on the candidate embedding decodes one of the item's own features
that the candidate tower also reads (e.g. genres: a sigmoid per token; a
categorical or bucketized feature: a softmax), so the embedding must keep
what that feature says about the item beside what the id learns: an
item-side representation task, where `classification` instead hides its
label from the tower and `reconstruction` decodes the user's history from
the query side. Its loss and Keras metric are `classification`'s.
"""

from __future__ import annotations

from typing import Optional

from tfmtl.errors import ConfigError
from tfmtl.tasks.classification import Classification


class Autoencoder(Classification):
  """The autoencoder task (see module doc)."""

  type = "autoencoder"
  hides_feature = False  # the tower reads what the head decodes: an autoencoder

  @classmethod
  def predicted_feature(cls, name, config, user_features, item_features
                        ) -> Optional[tuple[str, str]]:
    spec = item_features.get(config.label)
    if spec is None or spec.type == "vector":
      raise ConfigError(f"tasks.{name}.label: {config.label!r} is not a categorical, "
                        f"bucketized or multi_categorical item feature (item features: "
                        f"{sorted(item_features)})")
    return "candidate", config.label
