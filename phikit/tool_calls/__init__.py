"""Tool calling: the chat templates phikit ships (Phi-4-mini's, rendering tool history) and a parser of the calls a
model writes, read from its token ids and streamed as OpenAI's deltas."""

from .parser import ParsedOutput, ToolCall, ToolCallParser, ToolDelta
from .templates import BUILTIN_TEMPLATES, builtin_template, template_reads_tools

__all__ = ["BUILTIN_TEMPLATES", "ParsedOutput", "ToolCall", "ToolCallParser", "ToolDelta", "builtin_template",
           "template_reads_tools"]
