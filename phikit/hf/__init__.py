"""The transformers-compatible facade: the seed classes (`Phi3ForCausalLM`, ...), `Auto*`, outputs and losses."""
