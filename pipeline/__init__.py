"""Apache Beam preprocessing: corpus -> mel -> train-split z-normalisation -> chunks -> TFRecords."""
