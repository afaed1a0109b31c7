"""Weight formats as module swaps: int8 / int4 weight-only quantization and lossless 12-bit bf16."""
