"""Evaluation: loss barriers, membership inference, difficulty scores (THEORY §6)."""
