"""Text generation: logits processors, stopping criteria, decoding strategies, streamers."""
