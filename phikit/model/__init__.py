"""The device-agnostic reference model: rope, masks, layers, attention, MoE, caches, the decoder. It reaches fast
paths only through the `phikit.ops` table a backend binds at load; it imports no kernel, format or loader."""
