"""Widgets used by the tabs, one module each."""
