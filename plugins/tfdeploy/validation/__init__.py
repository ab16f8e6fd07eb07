"""Validation of a model version: golden examples, metrics and thresholds (as TFX's Evaluator does)."""
