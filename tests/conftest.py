"""Shared fixtures and hypothesis profiles.

``GATATTN_HYPOTHESIS_PROFILE=thorough`` (or ``--hypothesis-profile=thorough``) runs 2,000 cases
per property; the default profile runs 60, so that each property takes a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("MPLBACKEND", "Agg")

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# GATATTN_HYPOTHESIS_PROFILE=thorough (HYPOTHESIS_PROFILE is read too, as before)
settings.load_profile(
    os.environ.get("GATATTN_HYPOTHESIS_PROFILE") or os.environ.get("HYPOTHESIS_PROFILE", "default")
)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny cases: avoids spin-wait contention on a busy
    2-core machine (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_within_torch_error(
    ours: torch.Tensor,
    theirs: torch.Tensor,
    gold: torch.Tensor,
    *,
    factor: float = 4.0,
    what: str = "",
) -> None:
    """Low-precision bound (docs/backends.md, "Precision and higher-order gradients"; as
    FlexAttention's tests do): gatattn's error against the fp64 ``gold`` is at most ``factor``
    times torch's own error ``theirs`` against it, plus 8 rounding units of the dtype at the
    scale of ``gold`` (a different summation order; and torch may happen to be exact). No
    absolute number tuned on one CPU."""
    assert torch.isfinite(ours).all(), what
    gold = gold.detach().double()
    err = (ours.detach().double() - gold).abs().max().item()
    torch_err = (theirs.detach().double() - gold).abs().max().item()
    unit = torch.finfo(ours.dtype).eps * max(gold.abs().max().item(), 1e-30)
    assert err <= factor * torch_err + 8 * unit, (
        f"{what}: gatattn error {err:.3e} > {factor} x torch's {torch_err:.3e} + 8 x {unit:.1e}"
    )


@pytest.fixture(scope="session")
def within_torch_error() -> Callable[..., None]:
    """``assert_within_torch_error(ours, theirs, gold, factor=4.0, what="")`` as a fixture
    (the tests run with --import-mode=importlib, so they cannot import conftest)."""
    return assert_within_torch_error


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs CUDA, which this machine does not have")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
