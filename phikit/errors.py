"""Errors every layer raises (a leaf module: it imports nothing of phikit's)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field has a value phikit cannot run; the message names the field, the value and the fix."""
