"""Weights: checkpoint files (safetensors, sharded, legacy .bin), name maps, and the loader with its strict accountant."""
