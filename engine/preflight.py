"""Preflight checks (placeholder until the preflight issue lands)."""
