"""Keras 3 library of temporal-enhanced DeepEmoCluster, in four wings.

- ``model.nets``: the networks and their losses, and the variant table.
- ``model.training``: the training runtime (paper Algorithm 1, its train step, re-assignment,
  K-means, samplers, datasets, checkpoints, the job folder).
- ``model.serving``: SavedModel export, the in-graph front end, prediction, conversion of the
  authors' released weights.
- ``model.evaluation``: the paper's protocol, analyses, results tables and plots.

``model/predict.py``, ``evaluate.py``, ``experiments.py`` and ``convert_reference.py`` are the
``python -m model.<name>`` commands; ``progress`` and ``tf_paths`` serve every wing.
"""
