"""Each script's ``RunOptions`` (services/memory/store.py) points at the ARGV its Lua reads:
the indexes are written once, in Python, and the scripts read them by number, so a script
given another argument before them would have ``_run`` rewrite the wrong one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.memory import store
from services.memory.store import RunOptions, _declare_turns

_LUA = Path(store.__file__).parent / "lua"


def _source(script: str) -> str:
    """The script's own text (not the libraries ``lua_source`` puts before it)."""
    return (_LUA / f"{script}.lua").read_text()


@pytest.mark.parametrize(
    ("script", "options"),
    [("check_storage", store._CHECK_STORAGE), ("update_interaction", store._UPDATE_INTERACTION)],
)
def test_the_gone_window_is_where_the_script_reads_it(script: str, options: RunOptions) -> None:
    # usage.lua's gone_check_at(at): the window's offset is ARGV[at], its turn count (the
    # one missing keys are named after) ARGV[at + 1], args[at] in Python.
    (at,) = re.findall(r"^gone_check_at\((\d+)\)", _source(script), re.MULTILINE)
    assert options.gone_at == int(at)
    assert not options.gone_before_declared and options.sample_at is None


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("create_interaction", store._CREATE_INTERACTION),
        ("update_conversation", store._UPDATE_CONVERSATION),
        ("update_summary", store._UPDATE_SUMMARY),
    ],
)
def test_an_evicting_scripts_gone_window_comes_before_its_declared_turns(
    script: str, options: RunOptions
) -> None:
    assert re.search(r"^gone_check_before_declared\(\)", _source(script), re.MULTILINE)
    assert options.gone_before_declared and options.gone_at is None
    # The window's turn count is found before any number of turns declared, as the
    # store sends them (keys.lua's declared_turns: iid, request_id pairs, then their count).
    # (A script's _DECLARE reply, as Redis answers it: bytes.)
    for reply in ([], [7, b"i1", b"r1"], [7, b"i1", b"", b"i2", b"r2", b"i3", b""]):
        _, declared = _declare_turns("t", {}, reply)
        args = ["caller", "tag", "cid", 123, "16 ?tag:conv:gone", *declared]
        index = options.gone_index(args)
        assert index is not None
        assert args[index] == "16 ?tag:conv:gone"


@pytest.mark.parametrize(
    ("script", "options", "pattern"),
    [
        # local window = tonumber(ARGV[4])
        ("get_conversation", store._GET_CONVERSATION, r"local window = tonumber\(ARGV\[(\d+)\]\)"),
        # local offset, window = tonumber(ARGV[7]), tonumber(ARGV[8])
        (
            "list_conversations",
            store._LIST_CONVERSATIONS,
            r"local offset, window = tonumber\(ARGV\[\d+\]\), tonumber\(ARGV\[(\d+)\]\)",
        ),
    ],
)
def test_a_reads_sampled_window_is_where_the_script_reads_it(
    script: str, options: RunOptions, pattern: str
) -> None:
    (argv,) = re.findall(pattern, _source(script))
    assert options.sample_at == int(argv) - 1  # ARGV is 1-based
    assert options.gone_index(["anything"]) is None
