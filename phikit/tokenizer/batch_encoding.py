"""`BatchEncoding` (what a tokenizer call returns) and the pure helpers that pad, truncate and tensorise id lists."""

from __future__ import annotations

from typing import Any

import torch

PADDING_STRATEGIES = (True, False, "longest", "max_length", "do_not_pad")
TENSOR_TYPES = (None, "pt", "np")


class BatchEncoding(dict):
    """A dict of model inputs (`input_ids`, `attention_mask`, ...) that also allows attribute access.

    `enc.input_ids` equals `enc["input_ids"]`; `enc.to(device)` moves every tensor and returns the same object, so
    `model(**tokenizer(text, return_tensors="pt").to("cuda"))` works as with transformers.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    @property
    def data(self) -> dict[str, Any]:
        """The fields as a plain dict (transformers' `BatchEncoding.data`)."""
        return dict(self)

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move every tensor value to `device` in place and return `self`."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self

    def convert_to_tensors(self, tensor_type: str | None) -> BatchEncoding:
        """Turn list values into `torch` (`"pt"`) or NumPy (`"np"`) arrays in place; sequences must be equally long."""
        if tensor_type is None:
            return self
        for key, value in self.items():
            self[key] = to_tensor(value, tensor_type, key)
        return self


def to_tensor(value: Any, tensor_type: str, name: str = "input_ids") -> Any:
    """Convert a list of ids (or a list of such lists) to a 1-D / 2-D tensor of `tensor_type` ("pt" or "np")."""
    if tensor_type not in ("pt", "np"):
        raise ValueError(f"return_tensors={tensor_type!r} is not supported; use 'pt' (torch), 'np' (NumPy) or None.")
    if isinstance(value, list) and value and isinstance(value[0], list):
        lengths = {len(row) for row in value}
        if len(lengths) > 1:
            raise ValueError(f"cannot make one tensor of {name!r}: the sequences have lengths {sorted(lengths)}. "
                             "Pass padding=True (or padding='max_length') so they are equally long, or "
                             "return_tensors=None for lists.")
    tensor = torch.tensor(value, dtype=torch.long)
    return tensor if tensor_type == "pt" else tensor.numpy()


def padded_length(lengths: list[int], padding: bool | str, max_length: int | None,
                  pad_to_multiple_of: int | None) -> int | None:
    """The length every sequence is padded to, or None for no padding (transformers' padding strategies)."""
    if padding not in PADDING_STRATEGIES:
        raise ValueError(f"padding={padding!r} is not one of {PADDING_STRATEGIES}.")
    if padding in (False, "do_not_pad"):
        return None
    target = max_length if padding == "max_length" else max(lengths, default=0)
    if target is None:
        raise ValueError("padding='max_length' needs max_length=... (or a finite tokenizer.model_max_length).")
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    return target


def pad_sequences(ids: list[list[int]], target: int, pad_id: int, side: str) -> tuple[list[list[int]], list[list[int]]]:
    """Pad each id list to `target` on `side` ("left" or "right"); return (ids, attention masks). Longer lists stay."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side={side!r}; use 'left' or 'right'.")
    out_ids, out_mask = [], []
    for row in ids:
        n = max(target - len(row), 0)
        pad, mask = [pad_id] * n, [1] * len(row)
        if side == "right":
            out_ids.append(row + pad)
            out_mask.append(mask + [0] * n)
        else:
            out_ids.append(pad + row)
            out_mask.append([0] * n + mask)
    return out_ids, out_mask
