"""Types shared by the backends."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class BackendOutput(NamedTuple):
    """What a backend returns: out [N_t, H, D], and α / Attn [E, H] when asked for."""

    out: Tensor
    scores: Tensor | None
    weights: Tensor | None
