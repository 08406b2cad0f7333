"""Child processes that never outlive the service that started them.

Children run in their own session so a terminal's Ctrl-C reaches only us and we stop them
in order; the price is that a parent killed with SIGKILL would leave them running. On Linux
the kernel's parent-death signal closes that gap.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux only)."""
    return _set_parent_death_signal if sys.platform.startswith("linux") else None
