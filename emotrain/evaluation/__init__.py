"""Evaluation: scoring a split exactly once across ranks, gathering, predictions, metrics, reports,
loading a trained run on one process, and exporting its weights."""
