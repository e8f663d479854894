"""Layers: the two towers and the ranking heads."""

from tfmtl.layers.heads import RankingHead
from tfmtl.layers.towers import FeatureTower

__all__ = ["FeatureTower", "RankingHead"]
