"""Efficiency techniques, one module each, applied through one door: apply_(model, config, context)."""
