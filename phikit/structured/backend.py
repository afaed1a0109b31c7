"""The one place phikit imports llguidance (the optional extra `phikit[structured]`)."""

from __future__ import annotations

from types import ModuleType

INSTALL = "pip install 'phikit[structured]'"


class StructuredOutputUnavailable(ImportError):
    """llguidance is not installed; the message names the extra that brings it."""


def llguidance() -> ModuleType:
    """The llguidance module, or StructuredOutputUnavailable naming the command that installs it."""
    try:
        import llguidance as llg
    except ImportError as exc:
        raise StructuredOutputUnavailable(
            f"constrained decoding (grammar=, response_format, structured_outputs, tool_choice) needs llguidance, "
            f"which is not installed ({exc}); install it with: {INSTALL}") from exc
    return llg
