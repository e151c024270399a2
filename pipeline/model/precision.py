"""The one table of precisions: their names, their torch dtypes, and which of them train.

No torch at import: the CLI and the decoding workers check names long before a network is built.
"""

from __future__ import annotations

from typing import Any

_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISIONS = tuple(_DTYPE_NAMES)
TRAINING_PRECISIONS = ("fp32", "bf16")  # fp16 would need loss scaling; bf16 does not


def dtype(precision: str) -> Any:
    """The torch dtype of a precision name."""
    import torch

    if precision not in _DTYPE_NAMES:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return getattr(torch, _DTYPE_NAMES[precision])
