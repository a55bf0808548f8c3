"""Evaluation: the paper's protocol, analyses, results tables and plots."""
