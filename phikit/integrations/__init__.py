"""Integrations with the tools around transformers (each imports its tool only inside its own module)."""
