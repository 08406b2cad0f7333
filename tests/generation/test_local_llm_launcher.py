"""The local model's launcher without starting it: its settings and llama-server's command
line (the server itself: test_local_llm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.devlaunch import llm_server as local_llm
from services.generation.settings import LOCAL_SLOTS, PRESETS


def test_slots_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local_llm.SLOTS_VARIABLE, "12")
    assert local_llm.default_slots() == 12
    for bad in ("0", "many", "100000"):
        monkeypatch.setenv(local_llm.SLOTS_VARIABLE, bad)
        with pytest.raises(local_llm.LocalLLMUnavailable, match=local_llm.SLOTS_VARIABLE):
            local_llm.default_slots()


def test_server_command_splits_the_context_across_slots() -> None:
    args = local_llm.server_command(
        Path("m.gguf"), host="127.0.0.1", port=1, n_ctx=1024, slots=8, binary="srv"
    )
    assert args[0] == "srv"
    assert args[args.index("--parallel") + 1] == "8"
    assert args[args.index("--ctx-size") + 1] == str(8 * 1024)
    assert "--cont-batching" in args and "--no-kv-unified" in args


def test_the_local_preset_allows_every_slot_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local_llm.SLOTS_VARIABLE, raising=False)
    assert local_llm.default_slots() == LOCAL_SLOTS
    assert PRESETS["local"]["max_concurrency"] == LOCAL_SLOTS
