"""Structured output: constrained decoding on llguidance (the optional extra `phikit[structured]`).

    from phikit.structured import Grammar
    out = model.generate(**inputs, tokenizer=tok, grammar=Grammar.json_schema(schema), do_sample=True)

`Grammar` builds the constraint (JSON schema, any JSON object, regex, Lark, choices); `GrammarLogitsProcessor` applies
it per row and step; the engine and server use `GrammarMatcher` per choice. Importing this package does not import
llguidance: the first grammar does, and a missing package raises `StructuredOutputUnavailable` naming the extra.
"""

from .backend import StructuredOutputUnavailable
from .grammar import Grammar, GrammarError, strict_schema
from .matcher import GrammarMatcher
from .tools import call_schema, tool_call_grammar
from .processor import GrammarLogitsProcessor
from .vocab import grammar_tokenizer, token_table

__all__ = ["Grammar", "GrammarError", "GrammarLogitsProcessor", "GrammarMatcher", "StructuredOutputUnavailable",
           "call_schema", "grammar_tokenizer", "strict_schema", "token_table", "tool_call_grammar"]
