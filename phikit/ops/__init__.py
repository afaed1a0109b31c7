"""The seam between the reference model and the kernels: the `Ops` table (`table.py`), its reference functions
(`reference.py`, `activations.py`, `attention.py`) and the backends that build tables (`backends.py`).

`ops` imports only torch: the config, the model and every backend sit above it.
"""

from .table import REFERENCE, Ops, bind, bound, by_name, register

__all__ = ["Ops", "REFERENCE", "bind", "bound", "by_name", "register"]
