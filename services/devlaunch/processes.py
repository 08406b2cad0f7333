"""Child processes that never outlive the service that started them, and free ports.

Children run in their own session so a terminal's Ctrl-C reaches only us and we stop them
in order; the price is that a parent killed with SIGKILL would leave them running. On Linux
the kernel's parent-death signal closes that gap. It is set by util-linux's ``setpriv``
right before it execs the child, not by a ``preexec_fn``: code run between fork and exec in
a multi-threaded parent (gRPC has threads) can deadlock or crash.
"""

from __future__ import annotations

import shutil
import socket
import sys


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the child gets SIGTERM when its parent dies (where possible)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the child binds it a moment later)."""
    # The family of the host (an IPv6 literal does not bind on an AF_INET socket).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
