"""Layers: the two towers, multi-task blocks and the ranking heads."""

from tfmtl.layers.heads import PredictionHead, RankingHeads
from tfmtl.layers.multitask import MMoE, PLE, Independent, SharedBottom, make_block
from tfmtl.layers.towers import FeatureTower

__all__ = ["MMoE", "PLE", "FeatureTower", "Independent", "RankingHeads", "SharedBottom",
           "PredictionHead", "make_block"]
