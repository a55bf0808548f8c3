"""Serving: SavedModel export, the in-graph front end, prediction, conversion of released weights."""
