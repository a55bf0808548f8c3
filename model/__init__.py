"""Keras 3 model library of temporal-enhanced DeepEmoCluster."""
