"""Layers: the two towers, their id embeddings (plain, mixed-dimension, or
rows of shared TPU embedding tables), sequence pooling, multi-task blocks
and the task heads."""

from tfmtl.layers.embedding_tables import EmbeddingTables
from tfmtl.layers.heads import PredictionHead, RankingHeads
from tfmtl.layers.mixed_embedding import MixedDimensionEmbedding
from tfmtl.layers.multitask import MMoE, PLE, Independent, SharedBottom, make_block
from tfmtl.layers.sequence import SequencePooling
from tfmtl.layers.towers import FeatureTower

__all__ = ["MMoE", "PLE", "EmbeddingTables", "FeatureTower", "Independent", "MixedDimensionEmbedding",
           "PredictionHead", "RankingHeads", "SequencePooling", "SharedBottom", "make_block"]
