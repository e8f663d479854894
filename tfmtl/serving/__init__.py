"""Serving: SavedModel export in TF Serving's layout, and new items in an export."""

from tfmtl.serving.export import export_model
from tfmtl.serving.new_items import add_items
from tfmtl.serving.signatures import ServingModule
from tfmtl.serving.text import ServingText

__all__ = ["ServingModule", "ServingText", "add_items", "export_model"]
