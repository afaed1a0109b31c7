"""The CPU backend: native op bindings, the fused batch-1 decode step, and `prepare` for a loaded model."""
