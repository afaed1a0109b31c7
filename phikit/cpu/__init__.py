"""The native CPU layer: feature detection and levels, the C kernels (built per level), CPU GEMM choices."""
