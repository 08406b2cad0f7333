"""The line `gensearch import` ends with (no stack needed)."""

from __future__ import annotations

from services.cli.importer import summary_line


def test_one_object_is_singular() -> None:
    # Before: "imported 1 objects into B in 0.1s (11 objects/s); 0 failed".
    assert summary_line(1, "B", 0.09, 11.2, 0) == (
        "imported 1 object into B in 0.1s (11 objects/s); 0 failed"
    )
    assert summary_line(2, "Books", 0.2, 10.0, 1) == (
        "imported 2 objects into Books in 0.2s (10 objects/s); 1 failed"
    )


def test_the_time_waited_for_the_write_quota_is_said() -> None:
    assert summary_line(25, "B", 9.34, 2.7, 0, waited=8.2) == (
        "imported 25 objects into B in 9.3s (3 objects/s; 8s of it waiting for the write "
        "quota); 0 failed"
    )
