"""The score registry: names -> factories, and ``make_score`` (docs/scores.md).

``make_score("gatv2+alibi", H, D)`` builds a score plus biases by name; a ScoreFunction is used as
is, and a plain callable ``f(q_i, k_j) -> [E, H]`` is adapted.
"""

from __future__ import annotations

from collections.abc import Callable

from . import functions as fn
from .base import Biased, ScoreBias, ScoreCallable, ScoreFunction
from .biases import ALiBi, RelativePositionBias
from .rotary import Rotary
from .softcap import Softcap
from .structural import SpatialBias

__all__ = ["BIASES", "SCORES", "make_score", "register_score"]

#: name -> factory(num_heads, head_dim) -> ScoreFunction
SCORES: dict[str, Callable[[int, int], ScoreFunction]] = {
    "scaled_dot": lambda h, d: fn.ScaledDot(),
    "dot": lambda h, d: fn.Dot(),
    "additive": lambda h, d: fn.Additive(h, d),
    "gat": lambda h, d: fn.Additive(h, d),
    "gatv2": lambda h, d: fn.GATv2(h, d),
    "cosine": lambda h, d: fn.Cosine(h),
    "bilinear": lambda h, d: fn.Bilinear(h, d),
    "neg_distance": lambda h, d: fn.NegDistance(),
    # Gemma 2's attention logits: 50·tanh(<q_i, k_j>/(50·√D)); other caps: build Softcap(...)
    "softcap": lambda h, d: Softcap(fn.ScaledDot(), 50.0),
    # RoPE on every channel (the first D - 1 when D is odd), base 10000; partial, interleaved
    # or other bases: build Rotary(...)
    "rotary": lambda h, d: Rotary(d, d - d % 2),
}


#: name -> factory(num_heads) -> ScoreBias (edge_features needs edge_dim: build it directly;
#: "spatial" is SpatialBias(H, max_distance=20) and reads the hop distances as edge_attr)
BIASES: dict[str, Callable[[int], ScoreBias]] = {
    "relative_position": lambda h: RelativePositionBias(h),
    "alibi": lambda h: ALiBi(h),
    "spatial": lambda h: SpatialBias(h),
}


def register_score(name: str, factory: Callable[[int, int], ScoreFunction]) -> None:
    """Add ``factory(num_heads, head_dim) -> ScoreFunction`` to the registry under ``name``."""
    if name in SCORES:
        raise ValueError(f"score name {name!r} is already registered")
    SCORES[name] = factory


def make_score(
    spec: str | ScoreFunction | ScoreCallable, num_heads: int, head_dim: int
) -> ScoreFunction:
    """Resolve a score spec: a registry name (``"scaled_dot"``, ``"gatv2+alibi"``), a
    ScoreFunction instance (used as is), or a callable ``f(q_i, k_j) -> [E, H]`` (adapted)."""
    if isinstance(spec, ScoreFunction):
        return spec
    if isinstance(spec, str):
        name, *bias_names = [part.strip() for part in spec.split("+")]
        if name not in SCORES:
            raise ValueError(f"unknown score {name!r}; known scores: {sorted(SCORES)}")
        score = SCORES[name](num_heads, head_dim)
        for b in bias_names:
            if b == "edge_features":
                raise ValueError(
                    "edge_features needs edge_dim: build it as "
                    f"make_score({name!r}, ...) + gatattn.EdgeFeatureBias(edge_dim, num_heads)"
                )
            if b not in BIASES:
                raise ValueError(
                    f"unknown score bias {b!r} in {spec!r}; known biases: {sorted(BIASES)}"
                )
            score = Biased(score, BIASES[b](num_heads))
        return score
    if callable(spec):
        return fn.CallableScore(spec)
    raise TypeError(f"score must be a name, a ScoreFunction or a callable, got {spec!r}")
