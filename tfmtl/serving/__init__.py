"""Serving: SavedModel export in TF Serving's layout."""

from tfmtl.serving.export import ServingModule, export_model

__all__ = ["ServingModule", "export_model"]
