"""Put a model back exactly as it was when a change to it (loading an adapter, wrapping layers) fails part-way:
its module tree, which parameters require gradients, the values and plain attributes of chosen modules, and chosen
attributes of the model itself."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

_PLAIN = (int, float, bool, str, tuple, type(None))


class Rollback:
    """`state = Rollback(model, keep=modules whose tensors may be written, attrs=model attributes)`, then
    `state.restore()` after a failure."""

    def __init__(self, model: nn.Module, keep: Iterable[nn.Module] = (), attrs: Iterable[str] = ()) -> None:
        self.model = model
        self.modules = {n: m for n, m in model.named_modules() if n}
        self.grads = [(p, p.requires_grad) for p in model.parameters()]
        self.kept = [(m, {k: v.detach().clone() for k, v in m.state_dict(keep_vars=True).items()},
                      {k: v for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)})
                     for m in keep]
        self.attrs = {a: getattr(model, a) for a in attrs if hasattr(model, a)}
        self.attr_names = tuple(attrs)

    def restore(self) -> None:
        for name in sorted(self.modules, key=lambda n: n.count(".")):  # parents first
            parent, _, leaf = name.rpartition(".")
            holder = self.modules[parent] if parent else self.model
            if holder._modules.get(leaf) is not self.modules[name]:
                holder._modules[leaf] = self.modules[name]
        for module, tensors, plain in self.kept:
            current = module.state_dict(keep_vars=True)
            with torch.no_grad():
                for k, v in tensors.items():
                    current[k].copy_(v)
            for k, v in plain.items():
                setattr(module, k, v)
        for p, flag in self.grads:
            p.requires_grad_(flag)
        for a in self.attr_names:
            if a in self.attrs:
                setattr(self.model, a, self.attrs[a])
            elif hasattr(self.model, a):
                delattr(self.model, a)
