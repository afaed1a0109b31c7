"""Tokenizers: `AutoTokenizer` on tokenizer.json, SentencePiece, GGUF and tiktoken vocabularies; chat templates."""
