"""Evaluation: change-detection metrics, scoring a model on samples, figures."""
