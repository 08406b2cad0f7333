"""The gensearch subcommands against a real stack (see conftest): tables, --json, errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from google.protobuf import duration_pb2
from pydantic import SecretStr

from tests.cli.conftest import RunningStack

BOOKS = [
    {"title": "The Hobbit", "text": "A hobbit goes on an adventure with dwarves.", "year": 1937},
    {"title": "Dune", "text": "A desert planet, spice and a young duke.", "year": 1965},
    {"title": "Neuromancer", "text": "A hacker in cyberspace and an AI heist.", "year": 1984},
    {"title": "Emma", "text": "A young woman plays matchmaker in a village.", "year": 1815},
]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def new_name(prefix: str = "Books") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def books(cli: Any, tmp_path: Path) -> str:
    """A local-vectorizer collection holding BOOKS; returns its name."""
    name = new_name()
    created = cli(
        "collections", "create", "--name", name,
        "--property", "title:text", "--property", "text:text", "--property", "year:int",
        "--description", "a few novels",
    )  # fmt: skip
    assert created.code == 0, created.err
    path = tmp_path / "books.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in BOOKS) + "\n")
    imported = cli("import", str(path), "--collection", name)
    assert imported.code == 0, imported.err
    return name


def test_status_through_the_gateway(cli: Any) -> None:
    result = cli("status")
    assert result.code == 0, result.out + result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert set(rows) == {"gateway", "memory", "retrieval", "generation"}
    assert "SERVING" in rows["gateway"]
    assert "SERVING" in rows["memory"] and "via" in rows["memory"]
    assert "SERVING" in rows["retrieval"]
    assert "SERVING" in rows["generation"] and "via" in rows["generation"]


def test_status_direct_and_json(cli: Any, running_stack: RunningStack) -> None:
    result = cli(
        "status", "--json",
        "--memory-address", running_stack.address_of("memory"),
        "--retrieval-address", running_stack.address_of("retrieval"),
        "--generation-address", running_stack.address_of("generation"),
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["ok"] is True
    assert {p["part"]: p["status"] for p in report["parts"]} == {
        "gateway": "SERVING",
        "memory": "SERVING",
        "retrieval": "SERVING",
        "generation": "SERVING",
    }


def test_status_reads_the_stack_file_of_up(
    cli: Any, running_stack: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(running_stack.data_dir))
    report = json.loads(cli("status", "--json").out)
    generation = next(p for p in report["parts"] if p["part"] == "generation")
    assert generation == {**generation, "status": "SERVING"}
    assert generation["address"] == running_stack.address_of("generation")

    # The same gateway spelled "localhost": still the stack of the file.
    port = running_stack.address.rsplit(":", 1)[1]
    spelled = json.loads(cli("status", "--json", address=f"localhost:{port}").out)
    generation = next(p for p in spelled["parts"] if p["part"] == "generation")
    assert generation["address"] == running_stack.address_of("generation")


def test_status_fails_when_a_part_is_down(cli: Any) -> None:
    result = cli("status", "--generation-address", "127.0.0.1:1")
    assert result.code == 1
    row = next(line for line in result.out.splitlines() if line.startswith("generation"))
    assert "UNAVAILABLE" in row and "cannot reach the generation service" in row


def test_collections_create_list_show_delete(cli: Any) -> None:
    name = new_name("Notes")
    created = cli(
        "collections", "create", "--name", name, "--property", "body:text",
        "--property", "tags:text[]", "--vectorizer", "none", "--dimensions", "3",
        "--json",
    )  # fmt: skip
    assert created.code == 0, created.err
    spec = json.loads(created.out)
    assert spec["name"] == name
    assert spec["vectorizer"]["kind"] == "VECTORIZER_KIND_NONE"
    assert [p["data_type"] for p in spec["properties"]] == [
        "DATA_TYPE_TEXT",
        "DATA_TYPE_TEXT_ARRAY",
    ]

    table = cli("collections", "list")
    assert table.code == 0
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["NAME", "OBJECTS", "VECTORIZER"]
    row = next(r for r in rows if r.startswith(name))
    assert row.split()[1:3] == ["0", "none"]
    assert "body:text, tags:text[]" in row

    listed = json.loads(cli("collections", "list", "--json").out)
    assert any(c["name"] == name and c["object_count"] == 0 for c in listed)

    shown = cli("collections", "show", name)
    assert shown.code == 0
    assert "vectorizer:" in shown.out and "none" in shown.out
    assert "dimensions:           3" in shown.out

    again = cli("collections", "create", "--name", name, "--property", "body:text")
    assert again.code == 1
    assert one_error_line(again.err).startswith("error: ALREADY_EXISTS: ")

    deleted = cli("collections", "delete", name)
    assert deleted.code == 0 and f"deleted collection {name}" in deleted.out
    gone = cli("collections", "show", name)
    assert gone.code == 1
    assert one_error_line(gone.err).startswith("error: NOT_FOUND: ")


def test_collections_show_keeps_labels_apart_from_values(cli: Any) -> None:
    name = new_name("Tuned")
    created = cli(
        "collections", "create", "--name", name, "--property", "body:text",
        "--provider", "local", "--max-tokens", "128", "--temperature", "0.5",
    )  # fmt: skip
    assert created.code == 0, created.err
    shown = cli("collections", "show", name).out.split("\n\n")[0].splitlines()
    labels = dict(line.split(":", 1) for line in shown)
    assert labels["generative max_tokens"].strip() == "128"
    # Every value starts in the same column, after at least one space.
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in shown}
    assert len(columns) == 1
    assert all(line.split(":", 1)[1].startswith(" ") for line in shown)


def test_collections_show_prints_the_chunking_aligned(cli: Any) -> None:
    # It printed every setting but the chunking, which only --json showed.
    name = new_name("Chunks")
    created = cli(
        "collections", "create", "--name", name, "--property", "text:text",
        "--property", "doc_id:text", "--property", "chunk_index:int",
        "--chunking", "doc_id:chunk_index",
    )  # fmt: skip
    assert created.code == 0, created.err
    shown = cli("collections", "show", name).out.split("\n\n")[0].splitlines()
    labels = {label: value.strip() for label, value in (line.split(":", 1) for line in shown)}
    assert labels["chunking document_property"] == "doc_id"
    assert labels["chunking order_property"] == "chunk_index"
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in shown}
    assert len(columns) == 1


def test_collections_show_prints_a_fallback_chain_and_cache_defaults(
    cli: Any, running_stack: RunningStack
) -> None:
    # `", ".join` of the fallback pairs (dicts) was a TypeError: the command failed.
    name = new_name("Fallback")
    generative = ret_pb.GenerativeConfig(
        provider="local",
        fallback=[ret_pb.GenerativeModel(provider="openai", model="gpt-4o-mini")],
        cache=ret_pb.CacheDefaults(generation=True, ttl=duration_pb2.Duration(seconds=60)),
    )
    collection = ret_pb.Collection(
        name=name,
        properties=[ret_pb.Property(name="body", data_type=ret_pb.DATA_TYPE_TEXT)],
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=3),
        generative=generative,
    )
    with grpc.insecure_channel(running_stack.address) as channel:
        ret_grpc.RetrievalServiceStub(channel).CreateCollection(
            ret_pb.CreateCollectionRequest(collection=collection), timeout=30
        )
    shown = cli("collections", "show", name)
    assert shown.code == 0, shown.err
    lines = shown.out.split("\n\n")[0].splitlines()
    labels = {label: value.strip() for label, value in (line.split(":", 1) for line in lines)}
    assert labels["generative fallback"] == "provider=openai model=gpt-4o-mini"
    assert labels["generative cache"] == "generation=true ttl=60s"


def test_invalid_input_is_one_line_naming_the_field(cli: Any) -> None:
    bad = cli("collections", "create", "--name", "9bad", "--property", "x:text")
    assert bad.code == 1
    line = one_error_line(bad.err)
    # Named once: the message begins with the field, so no "(field …)" repeats it.
    assert line.startswith("error: INVALID_ARGUMENT: collection.name must match ")
    assert "(field" not in line


def test_usage_errors_are_one_line(cli: Any) -> None:
    result = cli("search", "-c", "X")
    assert result.code == 2
    line = one_error_line(result.err)
    assert "one of the arguments --near-text --keyword --hybrid --near-vector is required" in line
    assert "gensearch search --help" in line


def test_bad_property_type(cli: Any) -> None:
    result = cli("collections", "create", "--name", "X", "--property", "x:blob")
    assert result.code == 2  # a usage mistake, as docs/cli.md says
    assert "TYPE must be one of" in one_error_line(result.err)


def test_import_reports_bad_lines_and_rejected_objects(cli: Any, tmp_path: Path) -> None:
    name = new_name()
    cli("collections", "create", "--name", name, "--property", "title:text",
        "--property", "year:int", "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    lines = [
        json.dumps(
            {"id": str(uuid.uuid4()), "properties": {"title": "a", "year": 1}, "vector": [1, 0]}
        ),
        "{not json",
        json.dumps({"properties": {"title": "b", "year": "x"}, "vector": [0, 1]}),  # wrong type
        "",
        json.dumps([1, 2]),
        # bare: "vector" is then a property the schema lacks
        json.dumps({"title": "bare", "year": 3, "vector": [0.5, 0.5]}),
        json.dumps({"properties": {"title": "c", "year": 4}, "vector": [0.6, 0.8]}),
    ]  # fmt: skip
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = cli("import", str(path), "--collection", name, "--batch-size", "2")
    assert result.code == 2, result.err
    assert f"imported 2 objects into {name}" in result.out
    assert "4 failed" in result.out
    assert "line 2: not valid JSON" in result.err
    assert "line 3: properties.year" in result.err
    assert "line 5: expected a JSON object, got list" in result.err
    assert "line 6: " in result.err  # no vector for a vectorizer-less collection, or unknown prop
    assert "objects/s" in result.out
    assert "Traceback" not in result.err

    as_json = cli("import", str(path), "--collection", name, "--json")
    report = json.loads(as_json.out)
    assert report["imported"] == 2 and report["failed"] == 4
    assert [e["line"] for e in report["errors"]] == [2, 3, 5, 6]
    assert report["errors"][1]["field"] == "properties.year"


def test_import_in_several_streams_maps_errors_to_lines(cli: Any, tmp_path: Path) -> None:
    name = new_name()
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    rows = [{"properties": {"n": i}, "vector": [1, 0]} for i in range(25)]
    rows[17]["properties"]["n"] = "seventeen"
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = cli(
        "import", str(path), "--collection", name, "--batch-size", "3",
        "--objects-per-call", "7", "--json",
    )  # fmt: skip
    report = json.loads(result.out)
    assert report["imported"] == 24 and report["received"] == 25
    assert [e["line"] for e in report["errors"]] == [18]
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == 24


def test_import_counts_rejections_the_service_did_not_list(cli: Any, tmp_path: Path) -> None:
    # One call of 1,002 bad objects: retrieval lists the first 1,000 (its default
    # max_import_errors) and counts the rest; the report's total must not lose them.
    name = new_name()
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    rows = [{"properties": {"n": "x"}, "vector": [1, 0]} for _ in range(1002)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    one_call = ("--collection", name, "--batch-size", "500", "--objects-per-call", "2000")
    report = json.loads(cli("import", str(path), *one_call, "--json").out)
    assert (report["received"], report["imported"], report["failed"]) == (1002, 0, 1002)
    assert len(report["errors"]) == 1000
    result = cli("import", str(path), *one_call)
    assert result.code == 2 and "1002 failed" in result.out
    assert "2 more the service rejected without listing them" in result.err


def test_import_into_a_missing_collection_is_one_error(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"title": "x"}\n')
    result = cli("import", str(path), "--collection", "NoSuchCollection")
    assert result.code == 1
    assert one_error_line(result.err).startswith("error: NOT_FOUND: ")


def test_import_missing_file(cli: Any) -> None:
    result = cli("import", "/nonexistent.jsonl", "--collection", "X")
    assert result.code == 2
    assert one_error_line(result.err) == "error: /nonexistent.jsonl: no such file"


def test_import_a_directory_says_so(cli: Any, tmp_path: Path) -> None:
    # It said "no such file" of a directory that plainly exists.
    result = cli("import", str(tmp_path), "--collection", "X")
    assert result.code == 2
    assert one_error_line(result.err) == (
        f"error: {tmp_path}: is a directory, not a JSON Lines file"
    )


def test_search_modes_table_and_json(cli: Any, books: str) -> None:
    keyword = cli("search", "-c", books, "--keyword", "desert spice", "--limit", "2")
    assert keyword.code == 0, keyword.err
    header, first, *_ = keyword.out.splitlines()
    assert header.split()[:3] == ["#", "SCORE", "ID"]
    assert "Dune" in first

    near = json.loads(cli("search", "-c", books, "--near-text", "hacker AI", "--json").out)
    assert near["hits"][0]["properties"]["title"] == "Neuromancer"

    hybrid = json.loads(
        cli("search", "-c", books, "--hybrid", "hobbit dwarves", "--alpha", "0.5", "--json").out
    )
    assert hybrid["hits"][0]["properties"]["title"] == "The Hobbit"

    filtered = json.loads(
        cli(
            "search", "-c", books, "--near-text", "a story", "--limit", "10", "--json",
            "--filter", '{"property": "year", "operator": "less_than", "value": 1900}',
        ).out
    )  # fmt: skip
    assert [h["properties"]["title"] for h in filtered["hits"]] == ["Emma"]

    grouped_filter = json.loads(
        cli(
            "search", "-c", books, "--keyword", "young", "--limit", "10", "--json", "--filter",
            '{"any_of": [{"property": "year", "operator": "equal", "value": 1937},'
            ' {"property": "year", "operator": "OPERATOR_EQUAL", "value": 1965}]}',
        ).out
    )  # fmt: skip
    assert [h["properties"]["title"] for h in grouped_filter["hits"]] == ["Dune"]


def test_search_argument_errors(cli: Any, books: str) -> None:
    bad_filter = cli("search", "-c", books, "--keyword", "x", "--filter", "{oops")
    assert bad_filter.code == 2
    assert one_error_line(bad_filter.err).startswith("error: --filter is not valid JSON")
    bad_vector = cli("search", "-c", books, "--near-vector", '["a"]')
    assert bad_vector.code == 2
    assert cli("search", "-c", books, "--keyword", "x", "--alpha", "0.5").code == 2
    assert "--near-vector must be a JSON list of numbers" in one_error_line(bad_vector.err)
    bad_prop = cli(
        "search", "-c", books, "--keyword", "x", "--filter",
        '{"property": "nope", "operator": "equal", "value": 1}',
    )  # fmt: skip
    assert bad_prop.code == 1
    assert one_error_line(bad_prop.err).startswith("error: INVALID_ARGUMENT: ")


def test_generative_search(cli: Any, books: str, running_stack: RunningStack) -> None:
    running_stack.fake.reply = lambda body: "GENERATED " + body["messages"][-1]["content"][:40]
    result = cli(
        "search", "-c", books, "--keyword", "desert", "--limit", "2",
        "--single-prompt", "Summarize {title}: {text}",
        "--grouped-task", "What do these books share?", "--grouped-property", "title",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "[1] Dune" in result.out
    assert "→ GENERATED Summarize Dune" in result.out
    assert "grouped result:" in result.out
    assert "usage:" in result.out

    as_json = json.loads(
        cli(
            "search", "-c", books, "--keyword", "desert", "--limit", "1", "--json",
            "--single-prompt", "About {title}",
        ).out
    )  # fmt: skip
    assert as_json["hits"][0]["generation"]["result"].startswith("GENERATED")


def test_streaming_search_prints_events_in_order(
    cli: Any, books: str, running_stack: RunningStack
) -> None:
    running_stack.fake.reply = "one two three"
    result = cli(
        "search", "-c", books, "--near-text", "adventure", "--limit", "2", "--stream",
        "--single-prompt", "About {title}", "--grouped-task", "Sum up",
    )  # fmt: skip
    assert result.code == 0, result.err
    out = result.out
    assert out.index("2 hits:") < out.index("→") < out.index("grouped result:")
    assert "one two three" in out[out.index("grouped result:") :]

    events = cli(
        "search", "-c", books, "--near-text", "adventure", "--limit", "1", "--stream",
        "--json", "--grouped-task", "Sum up",
    ).out  # fmt: skip
    kinds = [next(iter(json.loads(line))) for line in events.splitlines()]  # JSON Lines
    assert kinds[0] == "hits" and kinds[-1] == "done" and "grouped" in kinds


def test_ask_continues_the_last_conversation(
    cli: Any, books: str, running_stack: RunningStack, tmp_path: Path
) -> None:
    running_stack.fake.reply = "It is about a hobbit."
    first = cli("ask", "-c", books, "What is The Hobbit about?")
    assert first.code == 0, first.err
    assert "It is about a hobbit." in first.out
    assert "sources:" in first.out
    conversation_id = first.out.split("conversation ")[1].split()[0]
    remembered = json.loads((tmp_path / "state" / "last_conversation").read_text())
    assert remembered == {running_stack.address: conversation_id}

    second = cli("ask", "-c", books, "And who wrote it?", "--json")
    assert json.loads(second.out)["conversation_id"] == conversation_id

    shown = cli("conversations", "show", conversation_id)
    assert shown.code == 0
    assert "2 turns" in shown.out
    assert shown.out.index("What is The Hobbit about?") < shown.out.index("And who wrote it?")

    fresh = json.loads(cli("ask", "-c", books, "Is Dune long?", "--new", "--json").out)
    assert fresh["conversation_id"] not in ("", conversation_id)
    one = cli("conversations", "show", fresh["conversation_id"]).out
    assert "\n1 turn · created" in one  # not "1 turns"

    listed = cli("conversations", "list")
    assert conversation_id in listed.out and fresh["conversation_id"] in listed.out
    as_json = json.loads(cli("conversations", "list", "--json").out)
    ids = [c["conversation_id"] for c in as_json["conversations"]]
    assert ids.index(fresh["conversation_id"]) < ids.index(conversation_id)  # newest first

    deleted = cli("conversations", "delete", fresh["conversation_id"])
    assert deleted.code == 0
    # Deleting the remembered conversation forgets it: the next ask starts a new one.
    assert json.loads((tmp_path / "state" / "last_conversation").read_text()) == {}
    third = json.loads(cli("ask", "-c", books, "Anything else?", "--json").out)
    assert third["conversation_id"] not in (conversation_id, fresh["conversation_id"])

    # Remembered, but deleted elsewhere: a new conversation, with a note.
    other_state = str(tmp_path / "other")
    deleted_elsewhere = cli(
        "conversations", "delete", third["conversation_id"], "--state-dir", other_state
    )
    assert deleted_elsewhere.code == 0
    fourth = cli("ask", "-c", books, "Still there?", "--json")
    assert fourth.code == 0, fourth.err
    assert f"conversation {third['conversation_id']} is gone; starting a new one" in fourth.err
    assert json.loads(fourth.out)["conversation_id"] != third["conversation_id"]


def test_ask_into_a_missing_collection_keeps_the_conversation(
    cli: Any, books: str, tmp_path: Path
) -> None:
    first = json.loads(cli("ask", "-c", books, "What is Dune about?", "--json").out)
    remembered = tmp_path / "state" / "last_conversation"
    before = remembered.read_text()
    assert first["conversation_id"] in before

    typo = cli("ask", "-c", books + "z", "And who wrote it?")
    assert typo.code == 1
    # A mistyped collection is not a vanished conversation: no note, nothing forgotten.
    assert "is gone" not in typo.err
    assert one_error_line(typo.err).startswith("error: NOT_FOUND: ")
    assert "collection" in typo.err
    assert remembered.read_text() == before


def test_ask_streaming(cli: Any, books: str, running_stack: RunningStack) -> None:
    running_stack.fake.reply = "Streamed answer words"
    result = cli("ask", "-c", books, "Tell me about Dune", "--new", "--stream")
    assert result.code == 0, result.err
    assert result.out.startswith("Streamed answer words")
    assert "conversation " in result.out

    events = cli("ask", "-c", books, "And Emma?", "--stream", "--json").out.splitlines()
    kinds = [next(iter(json.loads(line))) for line in events]
    assert kinds[0] == "context" and kinds[-1] == "answer" and "delta" in kinds
    assert "".join(json.loads(line).get("delta", "") for line in events).startswith("Streamed")


def test_unknown_conversation_is_one_line(cli: Any) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    result = cli("conversations", "show", missing)
    assert result.code == 1
    line = one_error_line(result.err)
    assert line.startswith("error: NOT_FOUND: ") and "not found" in line

    malformed = cli("conversations", "show", "not-an-id")
    assert malformed.code == 1
    line = one_error_line(malformed.err)
    assert line.startswith("error: INVALID_ARGUMENT: conversation_id must be a UUID")
    assert "(field" not in line

    continued = cli("ask", "-c", "Whatever", "hi", "--conversation", missing)
    assert continued.code == 1
    one_error_line(continued.err)


def test_unreachable_gateway_is_one_line(cli: Any) -> None:
    result = cli("collections", "list", address="127.0.0.1:1")
    assert result.code == 1
    line = one_error_line(result.err)
    assert line.startswith("error: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1")


def test_api_key_is_sent_as_bearer(cli: Any) -> None:
    # The stack runs without API keys, so any key is accepted; an invalid --llm-key shape
    # is refused before any call and never echoed.
    result = cli("--llm-key", "openai", "collections", "list")
    assert result.code == 2  # a usage mistake (docs/cli.md)
    assert one_error_line(result.err) == (
        "error: --llm-key must look like PROVIDER=KEY, e.g. openai=sk-..."
    )
    secret = cli("--llm-key", "sk-secret-value", "collections", "list")
    assert secret.code == 2 and "sk-secret-value" not in secret.err


@pytest.fixture
def keyed_gateway(running_stack: RunningStack) -> Iterator[str]:
    """A second gateway in front of the same services, with API keys configured."""
    from services.gateway.__main__ import build_server
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings(
        # In the tenant "default", where the open stack's collections are ("alice:<key>"
        # would be alice alone in a tenant "alice", with none of them).
        api_keys=SecretStr("alice@default/reader:alice-key,bob@default/reader:bob-key"),
        internal_token=SecretStr(running_stack.stack.token),
        memory_addr=running_stack.address_of("memory"),
        retrieval_addr=running_stack.address_of("retrieval"),
        generation_addr=running_stack.address_of("generation"),
        metrics_port=None,
    )

    async def start() -> Any:
        server = await build_server(settings, port=0)
        await server.start()
        return server

    server = running_stack.loop.run(start())
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        running_stack.loop.run(server.stop(0))


def test_api_keys_from_flag_and_env(
    cli: Any, books: str, keyed_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = cli("conversations", "list", address=keyed_gateway)
    assert missing.code == 1
    assert one_error_line(missing.err).startswith("error: UNAUTHENTICATED: missing credentials")

    wrong = cli("--api-key", "nope", "conversations", "list", address=keyed_gateway)
    assert one_error_line(wrong.err) == (
        "error: UNAUTHENTICATED: invalid API key; with gensearch: check --api-key or "
        "GENSEARCH_API_KEY"
    )
    assert "nope" not in wrong.err

    asked = cli(
        "ask", "-c", books, "Who is Emma?", "--new", "--json", "--api-key", "alice-key",
        address=keyed_gateway,
    )  # fmt: skip
    assert asked.code == 0, asked.err
    alice_conversation = json.loads(asked.out)["conversation_id"]

    monkeypatch.setenv("GENSEARCH_API_KEY", "alice-key")
    mine = json.loads(cli("conversations", "list", "--json", address=keyed_gateway).out)
    assert alice_conversation in [c["conversation_id"] for c in mine["conversations"]]

    # Another user cannot see it: NOT_FOUND, as if it did not exist.
    monkeypatch.setenv("GENSEARCH_API_KEY", "bob-key")
    theirs = cli("conversations", "show", alice_conversation, address=keyed_gateway)
    assert theirs.code == 1
    assert one_error_line(theirs.err).startswith("error: NOT_FOUND: ")


def test_ask_remembers_a_conversation_per_caller(
    cli: Any, books: str, running_stack: RunningStack, tmp_path: Path
) -> None:
    """The last conversation was remembered per gateway address only: after bob asked with
    his key, alice's next `ask` tried bob's conversation (NOT_FOUND for her: "conversation
    … is gone; starting a new one", though it was not) and her own thread was forgotten.
    (This stack has no keys, so both are served as one user: only the CLI's memory differs.)"""
    running_stack.fake.reply = "Noted."
    alice = json.loads(cli("--api-key", "alice-key", "ask", "-c", books, "Hi?", "--json").out)
    bob = json.loads(cli("--api-key", "bob-key", "ask", "-c", books, "Hello?", "--json").out)
    assert bob["conversation_id"] not in ("", alice["conversation_id"])
    again = json.loads(cli("--api-key", "alice-key", "ask", "-c", books, "More?", "--json").out)
    assert again["conversation_id"] == alice["conversation_id"]
    # Without a key: the address alone, as before (what `up --demo` with no keys writes).
    keyless = json.loads(cli("ask", "-c", books, "Anyone?", "--json").out)
    assert keyless["conversation_id"] not in (alice["conversation_id"], bob["conversation_id"])
    remembered = (tmp_path / "state" / "last_conversation").read_text()
    assert json.loads(remembered)[running_stack.address] == keyless["conversation_id"]
    assert "alice-key" not in remembered and "bob-key" not in remembered
