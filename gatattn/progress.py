"""Progress bars for long work (``gatattn bench``, ``demo``, ``verify``, MiniLM encoding)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None
) -> tqdm[T]:
    """``items`` behind a tqdm bar on stderr, drawn only when stderr is a terminal.

    Pipes, log files and tests see plain text: the bar is disabled (a silent pass-through whose
    ``set_postfix`` does nothing). ``enabled=False`` (``--no-progress``) hides it on a terminal
    too. The bar does not stay on screen after it ends.
    """
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, disable=not shown)
