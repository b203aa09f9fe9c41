"""Unlearning: UnlearningModule, SGLD, budgets and stopping rules (THEORY §5)."""
