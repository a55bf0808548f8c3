"""The training runtime: Algorithm 1, its train step, re-assignment, K-means, samplers, datasets, the job folder."""
