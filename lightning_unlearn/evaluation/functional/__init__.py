"""Pure functions behind the evaluation metrics (THEORY §6)."""
