"""Generators of reference values from official implementations (run by hand; tests read their saved output)."""
