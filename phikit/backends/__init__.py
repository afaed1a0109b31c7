"""Backends: each prepares a loaded model for its device (module swaps, op bindings, the fused step)."""
