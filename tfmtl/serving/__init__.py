"""Serving: SavedModel export in TF Serving's layout, and new items in an export."""

from tfmtl.serving.export import export_model
from tfmtl.serving.new_items import add_items
from tfmtl.serving.signatures import ServingModule

__all__ = ["ServingModule", "add_items", "export_model"]
