"""Issue 13's generation options from the CLI (the gateway and the Python client had them):
--cache, --fallback and --response-format on search, the sampling flags (--top-p, --stop,
the penalties, --seed) and --base-url, against the real stack (conftest)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.__main__ import main
from services.generation.settings import GenerationSettings
from tests.cli.conftest import FALLBACK, RunningStack
from tests.cli.test_commands import BOOKS, new_name, one_error_line
from tests.support.fake_openai import Behaviour, echo_last_user

SCHEMA = {
    "type": "object",
    "required": ["title", "year"],
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
}


def fake_model() -> str:
    """The local provider's one model (the stack refuses any other)."""
    return GenerationSettings().provider_configs()["local"].default_model


@pytest.fixture(scope="module")
def novels(running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One collection for the module (each one maps files of its own: fewer of them keep
    the session under the tests' address-space cap)."""
    name = new_name("Novels")
    address = ["--address", running_stack.address]
    created = main([*address, "collections", "create", "--name", name,
        "--property", "title:text", "--property", "text:text", "--property", "year:int",
    ])  # fmt: skip
    assert created == 0
    path = tmp_path_factory.mktemp("novels") / "novels.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in BOOKS) + "\n")
    assert main([*address, "import", str(path), "--collection", name]) == 0
    return name


@pytest.fixture
def fake(running_stack: RunningStack) -> Iterator[Any]:
    """The stack's fake LLM, its per-model scripts and reply reset afterwards."""
    yield running_stack.fake
    running_stack.fake.by_model.clear()
    running_stack.fake.clear_queue()
    running_stack.fake.reply = echo_last_user


def test_search_cache_use_then_cached(cli: Any, novels: str, fake: Any) -> None:
    fake.reply = "A fresh answer"
    search = ("search", "-c", novels, "--keyword", "desert", "--limit", "1")
    first = cli(*search, "--single-prompt", "About {title}", "--cache", "use:10m")
    assert first.code == 0, first.err
    assert "→ A fresh answer" in first.out
    assert "cached" not in first.out  # answered by the LLM, not the cache
    assert "attempt" not in first.out  # one attempt, the rule, goes unsaid

    again = cli(*search, "--single-prompt", "About {title}", "--cache", "use", "--json")
    assert again.code == 0, again.err
    generation = json.loads(again.out)["hits"][0]["generation"]
    assert generation["cached"] is True and generation["result"] == "A fresh answer"

    shown = cli(*search, "--single-prompt", "About {title}", "--cache", "use")
    assert "(cached" in shown.out

    bypassed = cli(*search, "--single-prompt", "About {title}", "--cache", "bypass", "--json")
    assert "cached" not in json.loads(bypassed.out)["hits"][0]["generation"]


def test_search_fallback_names_who_answered(cli: Any, novels: str, fake: Any) -> None:
    # The primary (the stack's one model) fails once, and is not retried: with a next pair
    # a 5xx moves on at once, and the fallback pair (the ollama preset, pointed at the same
    # fake) answers. (One 5xx queued per call: a leftover would fail later tests' calls.)
    model = fake_model()
    fake.enqueue_for_model(model, Behaviour.error(503))
    result = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1",
        "--single-prompt", "About {title}", "--fallback", FALLBACK,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert f"answered by {FALLBACK} (fallback 1)" in result.out

    fake.enqueue_for_model(model, Behaviour.error(500))
    grouped = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1", "--json",
        "--grouped-task", "Sum up", "--fallback", FALLBACK,
    )  # fmt: skip
    assert grouped.code == 0, grouped.err
    assert json.loads(grouped.out)["grouped"]["fallback_index"] == 1


def test_search_response_format_shows_structured(
    cli: Any, novels: str, fake: Any, tmp_path: Path
) -> None:
    fake.reply = json.dumps({"title": "Dune", "year": 1965})
    inline = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1",
        "--single-prompt", "Title and year of {title}", "--response-format", json.dumps(SCHEMA),
    )  # fmt: skip
    assert inline.code == 0, inline.err
    assert 'structured: {"title": "Dune", "year": 1965}' in inline.out

    schema_file = tmp_path / "book.schema.json"
    schema_file.write_text(json.dumps({"name": "book", "json_schema": SCHEMA, "strict": True}))
    from_file = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1", "--json",
        "--grouped-task", "The first book as JSON", "--response-format", str(schema_file),
    )  # fmt: skip
    assert from_file.code == 0, from_file.err
    assert json.loads(from_file.out)["grouped"]["structured"] == {"title": "Dune", "year": 1965}
    # Printed as the answer wrote it, as the table shows it: not 1965.0 (a Struct's double).
    assert '"year": 1965.0' not in from_file.out and '"year": 1965\n' in from_file.out
    streamed_json = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1", "--stream", "--json",
        "--single-prompt", "Title and year of {title}", "--response-format", str(schema_file),
    )  # fmt: skip
    assert streamed_json.code == 0, streamed_json.err
    assert '"structured": {"title": "Dune", "year": 1965}' in streamed_json.out
    assert "1965.0" not in streamed_json.out

    streamed = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1", "--stream",
        "--single-prompt", "Title and year of {title}", "--response-format", str(schema_file),
    )  # fmt: skip
    assert streamed.code == 0, streamed.err
    assert 'structured: {"title": "Dune", "year": 1965}' in streamed.out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache", "sometimes"], "--cache: unknown mode 'sometimes': use one of use, refresh"),
        (["--cache", "use:soon"], "--cache: the TTL 'soon' is not a positive duration"),
        (["--cache", "use:0"], "--cache: the TTL '0' is not a positive duration"),
        (["--fallback", "/gpt-4o"], "--fallback must look like PROVIDER or PROVIDER/MODEL"),
        (["--response-format", "{oops"], "--response-format: JSON is not valid: Expecting"),
        (["--response-format", "/nonexistent/schema.json"], "--response-format: cannot read"),
        (["--response-format", "[1]"], "--response-format: cannot read"),
        (["--response-format", "{}"], "--response-format: the schema must be a non-empty"),
        (
            ["--response-format", '{"json_schema": {"type": "object"}, "nam": "x"}'],
            "--response-format: unknown key 'nam' beside json_schema",
        ),
    ],
)
def test_search_generation_option_errors(
    cli: Any, novels: str, flags: list[str], message: str
) -> None:
    result = cli(
        "search", "-c", novels, "--keyword", "x", "--single-prompt", "About {title}", *flags
    )
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: " + message), result.err


def test_generation_options_without_a_prompt_are_refused(cli: Any, novels: str) -> None:
    result = cli("search", "-c", novels, "--keyword", "x", "--cache", "use")
    assert result.code == 2
    assert one_error_line(result.err) == ("error: --cache needs --single-prompt or --grouped-task")


def test_a_directory_as_response_format(cli: Any, novels: str, tmp_path: Path) -> None:
    result = cli(
        "search", "-c", novels, "--keyword", "x", "--single-prompt", "About {title}",
        "--response-format", str(tmp_path),
    )  # fmt: skip
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: --response-format: cannot read")


def test_ask_fallback(cli: Any, novels: str, fake: Any) -> None:
    model = fake_model()
    fake.reply = "Dune is about a desert planet [1]."
    fake.enqueue_for_model(model, Behaviour.error(503))
    answer = cli(
        "ask", "-c", novels, "What is Dune about?", "--no-memory", "--json",
        "--fallback", FALLBACK,
    )  # fmt: skip
    assert answer.code == 0, answer.err
    assert json.loads(answer.out)["fallback_index"] == 1


def test_ask_request_id_replays_the_stored_turn(cli: Any, novels: str, fake: Any) -> None:
    fake.reply = "Dune is about a desert planet [1]."
    key = f"turn-{uuid.uuid4()}"
    first = cli("ask", "-c", novels, "What is Dune about?", "--new", "--request-id", key)
    assert first.code == 0, first.err
    assert "replayed" not in first.out
    calls = len(fake.chat_requests)

    fake.reply = "A different answer"
    again = cli("ask", "-c", novels, "What is Dune about?", "--request-id", key)
    assert again.code == 0, again.err
    assert again.out.startswith("Dune is about a desert planet [1].")
    assert "replayed (the stored turn of this --request-id; nothing generated)" in again.out
    assert len(fake.chat_requests) == calls  # no LLM call

    streamed = cli("ask", "-c", novels, "What is Dune about?", "--request-id", key, "--stream")
    assert streamed.code == 0, streamed.err
    assert "replayed" in streamed.out
    as_json = cli("ask", "-c", novels, "What is Dune about?", "--request-id", key, "--json")
    assert json.loads(as_json.out)["replayed"] is True

    reused = cli("ask", "-c", novels, "Another question?", "--request-id", key)
    assert reused.code == 1
    assert one_error_line(reused.err).startswith("error: INVALID_ARGUMENT: ")
    assert "request_id" in reused.err

    empty = cli("ask", "-c", novels, "Anything?", "--request-id", " ")
    assert empty.code == 2
    assert one_error_line(empty.err) == "error: --request-id: the key is empty"


def test_ask_semantic_cache(cli: Any, novels: str, fake: Any) -> None:
    fake.reply = "A young duke on a desert planet [1]."
    question = f"What happens in Dune, the novel {uuid.uuid4().hex[:6]}?"
    first = cli("ask", "-c", novels, question, "--no-memory", "--semantic-cache", "use:1h")
    assert first.code == 0, first.err
    assert "cached" not in first.out
    # The store is written after the answer went out. A call that misses meanwhile stores
    # its own answer for the same question (last writer wins), so the fake keeps giving the
    # first answer until the cache has answered once.
    for _ in range(50):
        again = cli(
            "ask", "-c", novels, question, "--no-memory",
            "--semantic-cache", "use", "--min-similarity", "0.9",
        )  # fmt: skip
        assert again.code == 0, again.err
        if "cached:" in again.out:
            break
        time.sleep(0.1)
    assert "cached:" in again.out
    fake.reply = "Not from the cache"
    again = cli(
        "ask", "-c", novels, question, "--no-memory",
        "--semantic-cache", "use", "--min-similarity", "0.9",
    )  # fmt: skip
    assert again.code == 0, again.err
    assert again.out.startswith("A young duke on a desert planet [1].")
    assert f"cached: the answer given for {question!r}, similarity 1.00" in again.out

    bypassed = cli("ask", "-c", novels, question, "--no-memory", "--semantic-cache", "bypass")
    assert bypassed.out.startswith("Not from the cache")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--semantic-cache", "maybe"], "--semantic-cache: unknown mode 'maybe': use one of"),
        (["--semantic-cache", "use:-1"], "--semantic-cache: the TTL '-1' is not a positive"),
        (["--min-similarity", "0.9"], "--min-similarity needs --semantic-cache"),
        (["--fallback", ""], "--fallback must look like PROVIDER or PROVIDER/MODEL"),
    ],
)
def test_ask_option_errors(cli: Any, novels: str, flags: list[str], message: str) -> None:
    result = cli("ask", "-c", novels, "Anything?", "--no-memory", *flags)
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: " + message), result.err


# --- gensearch generate (GenerateOnObjects) ---------------------------------------------------


def ids_of(cli: Any, collection: str, *titles: str) -> list[str]:
    found = json.loads(
        cli("search", "-c", collection, "--near-text", "novel", "--limit", "10", "--json").out
    )
    by_title = {h["properties"]["title"]: h["id"] for h in found["hits"]}
    return [by_title[t] for t in titles]


def test_generate_by_ids(cli: Any, novels: str, fake: Any) -> None:
    fake.reply = lambda body: "ON " + body["messages"][-1]["content"][:30]
    emma, dune = ids_of(cli, novels, "Emma", "Dune")
    result = cli(
        "generate", "-c", novels, "--id", emma, "--id", dune,
        "--single-prompt", "Teaser for {title}", "--grouped-task", "Compare them",
        "--cache", "bypass",
    )  # fmt: skip
    assert result.code == 0, result.err
    out = result.out
    assert out.index("[1] Emma") < out.index("→ ON Teaser for Emma") < out.index("[2] Dune")
    assert "score" not in out  # nothing was searched
    assert "grouped result:" in out and "attempt" not in out

    streamed = cli(
        "generate", "-c", novels, "--id", dune, "--single-prompt", "Teaser for {title}",
        "--stream",
    )  # fmt: skip
    assert streamed.code == 0, streamed.err
    assert streamed.out.startswith("1 object:\n[1] Dune\n")
    assert "→ ON Teaser for Dune" not in streamed.out and "ON Teaser for Dune" in streamed.out

    missing = json.loads(
        cli(
            "generate", "-c", novels, "--id", dune, "--id", str(uuid.uuid4()), "--json",
            "--single-prompt", "Teaser for {title}",
        ).out
    )  # fmt: skip
    assert missing["hits"][0]["generation"]["result"].startswith("ON Teaser for Dune")
    assert missing["hits"][1]["generation"]["error"]["reason"] == "OBJECT_NOT_FOUND"


def test_generate_inline_objects(cli: Any, fake: Any, tmp_path: Path) -> None:
    fake.reply = json.dumps({"title": "Solaris", "year": 1961})
    path = tmp_path / "more.jsonl"
    path.write_text('{"title": "Solaris", "year": 1961}\n\n{"title": "Ubik", "year": 1969}\n')
    result = cli(
        "generate", "--object", '{"title": "Roadside Picnic", "year": 1972}',
        "--objects-file", str(path), "--single-prompt", "JSON for {title} ({year})",
        "--response-format", json.dumps(SCHEMA), "--fallback", FALLBACK,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "[1] Roadside Picnic\n" in result.out and "[3] Ubik\n" in result.out
    assert result.out.count('structured: {"title": "Solaris", "year": 1961}') == 3
    prompts = [r.json["messages"][-1]["content"] for r in fake.chat_requests[-3:]]
    assert sorted(prompts) == sorted(
        ["JSON for Roadside Picnic (1972)", "JSON for Solaris (1961)", "JSON for Ubik (1969)"]
    )

    # --json: the objects given come back as given (1972, not a Struct's 1972.0), and so
    # do the structured answers' integers.
    as_json = cli(
        "generate", "--object", '{"title": "Roadside Picnic", "year": 1972}', "--json",
        "--object", '{"title": "Stalker", "year": 1979.5}', "--single-prompt", "JSON for {title}",
        "--response-format", json.dumps(SCHEMA),
    )  # fmt: skip
    assert as_json.code == 0, as_json.err
    assert '"year": 1972,' in as_json.out or '"year": 1972\n' in as_json.out
    assert '"year": 1972.0' not in as_json.out and '"year": 1979.5' in as_json.out
    assert '"year": 1961.0' not in as_json.out and as_json.out.count('"year": 1961') == 2

    grouped = json.loads(
        cli(
            "generate", "--object", '{"title": "Ubik"}', "--grouped-task", "Sum up", "--json",
        ).out
    )  # fmt: skip
    assert grouped["grouped"]["result"]
    assert "generation" not in grouped["hits"][0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--object", "{}"], "generate needs --single-prompt or --grouped-task"),
        (["--single-prompt", "x"], "generate needs objects: --id (with --collection)"),
        (["--single-prompt", "x", "--id", "a"], "--id needs --collection"),
        (["--single-prompt", "x", "--object", "{oops"], "--object is not valid JSON"),
        (["--single-prompt", "x", "--object", "[1]"], "--object must be a JSON object"),
        (
            ["--single-prompt", "x", "--objects-file", "/nonexistent.jsonl"],
            "--objects-file: cannot read",
        ),
        (
            ["-c", "X", "--single-prompt", "x", "--id", "a", "--object", "{}"],
            "--id cannot be mixed with --object/--objects-file",
        ),
        (["--single-prompt", "x", "--object", "{}", "--cache", "never"], "--cache: unknown mode"),
    ],
)
def test_generate_usage_errors(cli: Any, argv: list[str], message: str) -> None:
    result = cli("generate", *argv)
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: " + message), result.err


def test_generate_a_bad_objects_file_line(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "Ubik"}\n{"title": \n')
    result = cli("generate", "--objects-file", str(path), "--single-prompt", "x")
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: --objects-file: line 2 is not valid JSON")
    assert cli("generate", "--objects-file", str(tmp_path), "--single-prompt", "x").code == 2


def test_generate_server_errors_are_one_line(cli: Any, novels: str) -> None:
    result = cli("generate", "-c", novels, "--id", "not-a-uuid", "--single-prompt", "x {title}")
    assert result.code == 1
    assert one_error_line(result.err).startswith("error: INVALID_ARGUMENT: ")


# --- sampling parameters and a caller's base URL (Generate only; Ask has none) -----------------

SAMPLING_KEYS = ("top_p", "stop", "frequency_penalty", "presence_penalty", "seed")


def new_chat_requests(fake: Any, before: int) -> list[dict[str, Any]]:
    return [r.json for r in fake.chat_requests[before:]]


@pytest.mark.parametrize(
    ("flags", "sent"),
    [
        (["--top-p", "0.5"], {"top_p": 0.5}),
        (["--stop", "END", "--stop", "\n\n"], {"stop": ["END", "\n\n"]}),
        (["--frequency-penalty", "-1.5"], {"frequency_penalty": -1.5}),
        (["--presence-penalty", "0.25"], {"presence_penalty": 0.25}),
        (["--seed", "0"], {"seed": 0}),  # a seed of 0 is sent: it is not "unset"
        (["--seed", str(2**63 - 1)], {"seed": 2**63 - 1}),
    ],
)
def test_a_sampling_flag_reaches_the_provider(
    cli: Any, novels: str, fake: Any, flags: list[str], sent: dict[str, Any]
) -> None:
    before = len(fake.chat_requests)
    result = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1",
        "--single-prompt", "About {title}", *flags,
    )  # fmt: skip
    assert result.code == 0, result.err
    (body,) = new_chat_requests(fake, before)
    # The flag's parameter, and none of the others: an unset flag leaves its field unset.
    assert {k: body[k] for k in SAMPLING_KEYS if k in body} == sent


def test_base_url_sends_the_call_to_the_callers_endpoint(
    cli: Any, novels: str, fake: Any, running_stack: RunningStack
) -> None:
    own = running_stack.own_llm
    own.reply = "From my own endpoint"
    before, own_before = len(fake.chat_requests), len(own.chat_requests)
    result = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1",
        "--single-prompt", "About {title}", "--base-url", own.base_url,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "→ From my own endpoint" in result.out
    assert len(new_chat_requests(own, own_before)) == 1
    assert new_chat_requests(fake, before) == []  # not the operator's endpoint


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--keyword", "desert", "--limit", "1", "--stream"],
        ["generate", "--object", '{"title": "Ubik"}'],
        ["generate", "--object", '{"title": "Ubik"}', "--stream"],
    ],
)
def test_sampling_flags_on_every_generation_call(
    cli: Any, novels: str, running_stack: RunningStack, argv: list[str]
) -> None:
    """search (streamed) and generate (GenerateOnObjects, plain and streamed) send them too."""
    own = running_stack.own_llm
    before = len(own.chat_requests)
    result = cli(
        *argv, "-c", novels, "--single-prompt", "About {title}", "--base-url", own.base_url,
        "--top-p", "0.9", "--stop", "END", "--frequency-penalty", "1",
        "--presence-penalty", "-1", "--seed", "42",
    )  # fmt: skip
    assert result.code == 0, result.err
    (body,) = new_chat_requests(own, before)
    assert {k: body.get(k) for k in SAMPLING_KEYS} == {
        "top_p": 0.9,
        "stop": ["END"],
        "frequency_penalty": 1.0,
        "presence_penalty": -1.0,
        "seed": 42,
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--top-p", "2"],
            "INVALID_ARGUMENT: generate.top_p must be in (0, 1]",
        ),
        (
            ["--top-p", "0"],
            "INVALID_ARGUMENT: generate.top_p must be in (0, 1]",
        ),
        (
            ["--frequency-penalty", "2.5"],
            "INVALID_ARGUMENT: generate.frequency_penalty must be between -2 and 2",
        ),
        (
            ["--presence-penalty", "-3"],
            "INVALID_ARGUMENT: generate.presence_penalty must be between -2 and 2",
        ),
        (
            ["--stop", "a", "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e"],
            "INVALID_ARGUMENT: at most 4 stop sequences are allowed "
            "(GENSEARCH_GATEWAY_MAX_STOP_SEQUENCES) (field generate.stop)",
        ),
        (
            ["--stop", ""],
            "INVALID_ARGUMENT: a stop sequence has 1 to 256 characters (field generate.stop[0])",
        ),
        (
            ["--base-url", " "],
            # The message names the path in full (it read "generate.base_url: base_url …",
            # the CLI cutting the prefix), and once: no "(field …)" repeating it.
            "INVALID_ARGUMENT: generate.base_url must not be blank",
        ),
    ],
)
def test_a_sampling_value_out_of_range_is_the_servers_error(
    cli: Any, novels: str, fake: Any, flags: list[str], message: str
) -> None:
    before = len(fake.chat_requests)
    result = cli(
        "search", "-c", novels, "--keyword", "desert", "--limit", "1",
        "--single-prompt", "About {title}", *flags,
    )  # fmt: skip
    assert result.code == 1
    assert one_error_line(result.err) == f"error: {message}"
    assert new_chat_requests(fake, before) == []


def test_a_base_url_off_the_allowlist_is_refused(
    cli: Any, novels: str, fake: Any, running_stack: RunningStack
) -> None:
    before = len(fake.chat_requests)
    # The operator's own endpoint, named by the caller: another port than the allowlist's.
    result = cli(
        "generate", "-c", novels, "--object", '{"title": "Ubik"}',
        "--single-prompt", "About {title}", "--base-url", fake.base_url,
    )  # fmt: skip
    assert result.code == 1
    assert one_error_line(result.err) == (
        f"error: PERMISSION_DENIED: host '127.0.0.1' port {fake.port} over plain http is not "
        "in the operator's allowlist (GENSEARCH_GENERATION_ALLOWED_HOSTS) "
        "(field generate.base_url)"
    )
    assert new_chat_requests(fake, before) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "high"], "argument --top-p: invalid float value: 'high'"),
        (["--seed", "1.5"], "argument --seed: '1.5' is not an integer"),
        (["--seed", str(2**63)], f"argument --seed: {2**63} is not an integer from"),
    ],
)
def test_sampling_flag_usage_errors(cli: Any, novels: str, flags: list[str], message: str) -> None:
    result = cli("search", "-c", novels, "--keyword", "x", "--single-prompt", "x", *flags)
    assert result.code == 2
    assert one_error_line(result.err).startswith("error: " + message), result.err


@pytest.mark.parametrize(
    ("flags", "given"),
    [
        (["--seed", "0"], "--seed"),
        (["--top-p", "0.5", "--stop", "END"], "--top-p, --stop"),
        (["--base-url", "http://127.0.0.1:1/v1"], "--base-url"),
    ],
)
def test_sampling_flags_without_a_prompt_are_refused(
    cli: Any, novels: str, flags: list[str], given: str
) -> None:
    result = cli("search", "-c", novels, "--keyword", "x", *flags)
    assert result.code == 2
    assert one_error_line(result.err) == f"error: {given} needs --single-prompt or --grouped-task"
