"""Chat session (placeholder until the chat issue lands)."""
