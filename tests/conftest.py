"""Shared fixtures and hypothesis profiles.

``GATATTN_HYPOTHESIS_PROFILE=thorough`` (or ``--hypothesis-profile=thorough``) runs 2,000 cases
per property; the default profile runs 60, so that each property takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

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


# ------------------------------------------------------------------ a headless Chromium
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

#: What Chromium needs to start as root in a container without a network: no sandbox (root),
#: no GPU, and nothing that phones home (QUIC, first-run pages, background networking, component
#: updates, sync); a fresh profile per session (``--user-data-dir``, added by ``driver``).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,760",
)


def browser_unavailable(reason: str) -> NoReturn:
    """Skip, unless the run demands the browser (``.ci/run`` sets GATATTN_REQUIRE_BROWSER=1):
    then a missing or broken browser fails the test instead of hiding it."""
    if os.environ.get("GATATTN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GATATTN_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_flags() -> tuple[str, ...]:
    """The flags ``driver`` starts Chromium with (tests/hf/test_html_browser.py checks them)."""
    return CHROMIUM_FLAGS


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium driven by Selenium (README: "Browser test"), one per session."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import WebDriverException

    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    chromedriver = shutil.which("chromedriver")
    if binary is None or chromedriver is None:
        browser_unavailable(
            "no Chromium and chromedriver: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in CHROMIUM_FLAGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        d = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    except WebDriverException as err:  # a browser that cannot start here is no test failure
        browser_unavailable(f"Chromium did not start: {err.msg}")
    yield d
    d.quit()
