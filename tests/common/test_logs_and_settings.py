from __future__ import annotations

import base64
import contextvars
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.exceptions import MovedError

from services.common.auth import Identity, Role
from services.common.logs import (
    RedactingJsonFormatter,
    ThrottledWarning,
    hide_in_this_call,
    redact,
    redacted_url,
    register_secret,
)
from services.common.settings import CommonSettings


def test_registered_secret_and_key_patterns_are_redacted() -> None:
    register_secret("hunter2-super-secret")
    text = redact("key hunter2-super-secret and Bearer abc.def and sk-abcdefghijkl and api_key=xyz")
    assert "hunter2" not in text
    assert "abc.def" not in text
    assert "sk-abcdefghijkl" not in text
    assert "xyz" not in text


def test_a_secret_in_another_spelling_is_redacted() -> None:
    secret = "sk-spelled-0123456789abcdef"
    hide_in_this_call(secret)
    mid = len(secret) // 2
    spellings = [
        secret.replace("-", "%2D"),
        secret.replace("-", "%2d"),
        "".join(f"%{ord(c):02x}" for c in secret),
        secret.replace("-", "%252D"),
        secret.replace("-", "\\u002d"),
        secret.replace("-", "\\x2D"),
        secret.replace("-", "&#45;"),
        secret.replace("-", "&#x2d;"),
        f"{secret[:mid]}\n   {secret[mid:]}",
        f"{secret[:mid]}\\n{secret[mid:]}",
        base64.b64encode(f"Bearer {secret}".encode()).decode(),
        base64.b64encode(f"user:{secret}".encode()).decode(),
        base64.urlsafe_b64encode(f"?{secret}?".encode()).decode().rstrip("="),
        secret.encode().hex(),
        # JSON may escape the slashes of base64 ("Pz8/..." of "???sk-..." as "Pz8\/...").
        base64.b64encode(f"???{secret}".encode()).decode().replace("/", "\\/"),
    ]
    for spelled in spellings:
        text = redact(f"upstream said: key {spelled} is wrong")
        assert text == "upstream said: key [REDACTED] is wrong", (spelled, text)


def test_a_good_part_of_a_secret_is_redacted_but_a_short_mask_is_not() -> None:
    secret = "AIzaSyD-partial-0123456789abcdefXYZ"
    hide_in_this_call(secret)
    for piece in (secret[:24], secret[-20:], secret[5:25]):
        assert redact(f"key {piece}... is wrong") == "key [REDACTED]... is wrong", piece
    # A provider's own mask ("AIza...XYZ") and short or unrelated runs stay.
    for text in (f"key {secret[:6]}***{secret[-3:]}", "key AIzaSyD-part", "request_id_0123456789"):
        assert redact(text) == text


def test_encoded_spellings_leave_ordinary_text_alone() -> None:
    hide_in_this_call("sk-spelled-0123456789abcdef")
    for text in (
        "GET https://llm.example/v1/chat/completions?x=%20%2D 200",
        'a JSON body {"a": "\\u00e9t\\u00e9", "b": "line\\nbreak"}',
        "trace 0123456789abcdef0123456789abcdef and " + base64.b64encode(b"hello world!").decode(),
        "two\nlines &amp; an entity",
    ):
        assert redact(text) == text


def test_a_redis_urls_passwords_are_registered_and_hidden_when_shown() -> None:
    from types import SimpleNamespace

    from services.common.redis_client import connect_configured

    url = "redis://app:p%40ss-userinfo-77@redis.example:6379/0?password=qs%2Fsecret-88&db=0"
    settings = SimpleNamespace(
        redis_cluster=False, redis_socket_timeout=1.0, redis_connect_timeout=1.0
    )
    connect_configured(url, settings)  # type: ignore[arg-type]  # no connection made yet
    # As written and as Redis gets them (percent-decoded), wherever they are quoted.
    for secret in ("p%40ss-userinfo-77", "p@ss-userinfo-77", "qs%2Fsecret-88", "qs/secret-88"):
        assert redact(f"auth with {secret} failed") == "auth with [REDACTED] failed"
    assert redacted_url(url) == "redis://app:***@redis.example:6379/0?password=***&db=0"
    assert redacted_url("https://q.example:6333/?api-key=k1&x=1") == (
        "https://q.example:6333/?api-key=***&x=1"
    )
    assert redacted_url("redis://redis.example:6379/0") == "redis://redis.example:6379/0"


def test_json_log_records_are_redacted() -> None:
    register_secret("topsecretvalue")
    formatter = RedactingJsonFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "calling with %s", ("topsecretvalue",), None
    )
    record.headers = {"authorization": "Bearer topsecretvalue"}
    line = formatter.format(record)
    assert "topsecretvalue" not in line
    assert json.loads(line)["message"] == "calling with [REDACTED]"


def test_api_keys_parse_and_errors_hide_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_API_KEYS", "alice:k1, bob:k2")
    assert CommonSettings().api_key_map() == {
        "k1": Identity("alice", "alice", Role.ADMIN),
        "k2": Identity("bob", "bob", Role.ADMIN),
    }
    bad = CommonSettings(api_keys=SecretStr("alice-without-colon-k9"))
    with pytest.raises(ValueError) as caught:
        bad.api_key_map()
    assert "k9" not in str(caught.value)
    assert "k1" not in repr(CommonSettings())


def test_a_calls_keys_are_hidden_in_it_alone() -> None:
    """A caller's key is hidden in the call (context) that carries it; the operator's
    secrets in every call. A process-wide list of callers' keys let any caller hide any
    word from every tenant's log lines (test failed before: the key was hidden here too)."""
    register_secret("pinned-config-secret-0001")

    def call(key: str) -> tuple[str, str]:
        hide_in_this_call(key)
        return redact(f"x {key} y"), redact("pinned-config-secret-0001")

    assert contextvars.copy_context().run(call, "request-key-000001") == (
        "x [REDACTED] y",
        "[REDACTED]",
    )
    assert redact("x request-key-000001 y") == "x request-key-000001 y"
    assert "pinned-config-secret-0001" not in redact("pinned-config-secret-0001")


def test_a_throttled_warning_logs_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    warn = ThrottledWarning(logging.getLogger("t.throttled"), "down: %s", every=0.2)
    with caplog.at_level(logging.WARNING, logger="t.throttled"):
        for _ in range(5):
            warn(ConnectionError("refused by 10.0.0.1"))
        assert [r.getMessage() for r in caplog.records] == ["down: ConnectionError"]
        time.sleep(0.25)
        warn(TimeoutError())
    assert [r.getMessage() for r in caplog.records] == [
        "down: ConnectionError",
        "down: TimeoutError",
    ]


def test_a_throttled_warnings_recovery_line_ends_an_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The recovery line is given once, at construction: ``recovered`` runs after every call
    # that succeeds and logs it only when an outage was warned about.
    warn = ThrottledWarning(
        logging.getLogger("t.recovery"), "down: %s", recovery="up again (100%)", every=0.0
    )
    with caplog.at_level(logging.INFO, logger="t.recovery"):
        warn.recovered()  # no outage behind it: nothing
        assert caplog.records == []
        warn(ConnectionError())
        warn.recovered()
        warn.recovered()
        # A wrong setting (a standalone client given a cluster node) is no outage to end.
        warn(MovedError("3999 127.0.0.1:6381"))
        warn.recovered()
        warn(TimeoutError())
        warn.recovered()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "ERROR", "WARNING", "INFO"]
    assert lines[0][1] == "down: ConnectionError"
    assert lines[1][1] == lines[4][1] == "up again (100%)"  # as written: no %-formatting
    assert lines[2][1].startswith("down: MovedError (the Redis URL names a Redis Cluster node")
    assert lines[3][1] == "down: TimeoutError"

    # Without a recovery line, an outage's end is not logged.
    quiet = ThrottledWarning(logging.getLogger("t.recovery.quiet"), "down: %s", every=0.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="t.recovery.quiet"):
        quiet(ConnectionError())
        quiet.recovered()
    assert [r.getMessage() for r in caplog.records] == ["down: ConnectionError"]


def test_a_throttled_warning_tracks_each_node_apart(caplog: pytest.LogCaptureFixture) -> None:
    # A Redis Cluster with one master down: the healthy masters' answers (``recovered`` of
    # their nodes) are not the dead one's recovery, and its next failures within the
    # period log nothing; before, one flag for all of them flipped on every such pair.
    warn = ThrottledWarning(logging.getLogger("t.nodes"), "down: %s", recovery="up again")
    with caplog.at_level(logging.INFO, logger="t.nodes"):
        for _ in range(3):
            warn(ConnectionError(), node="10.0.0.2:6379")
            warn.recovered("10.0.0.1:6379")
            warn.recovered("10.0.0.3:6379")
        assert warn.any_down
        warn(TimeoutError(), node="10.0.0.3:6379")  # another node: its own line
        warn.recovered("10.0.0.3:6379")
        warn.recovered("10.0.0.2:6379")
        warn.recovered("10.0.0.2:6379")
        assert not warn.any_down
    lines = [(r.levelname, r.getMessage(), getattr(r, "node", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "down: ConnectionError at node 10.0.0.2:6379", "10.0.0.2:6379"),
        ("WARNING", "down: TimeoutError at node 10.0.0.3:6379", "10.0.0.3:6379"),
        ("INFO", "up again (node 10.0.0.3:6379)", "10.0.0.3:6379"),
        ("INFO", "up again (node 10.0.0.2:6379)", "10.0.0.2:6379"),
    ]


def test_a_failure_of_no_known_node_is_ended_by_any_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warn = ThrottledWarning(logging.getLogger("t.unknown"), "down: %s", recovery="up again")
    with caplog.at_level(logging.INFO, logger="t.unknown"):
        warn(ConnectionError())  # no node could be named
        warn.recovered("10.0.0.1:6379")
    assert [r.getMessage() for r in caplog.records] == ["down: ConnectionError", "up again"]


def test_a_redis_node_is_named_by_its_address_only() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from services.common.redis_client import node_of

    standalone = Redis.from_url("redis://alice:pw-never-logged-77@10.1.2.3:6390/2")
    assert node_of(standalone, "any") == node_of(standalone, None) == "10.1.2.3:6390"
    local = Redis.from_url("unix://:pw-never-logged-77@/run/redis.sock")
    assert node_of(local, "any") == "/run/redis.sock"
    # A cluster client that has not read the slot map yet: no node can be named.
    cluster = RedisCluster.from_url("redis://:pw-never-logged-77@10.1.2.3:7000")
    assert node_of(cluster, "any") is None
    assert node_of(cluster, None) is None


def _stderr_of(script: str) -> str:
    """What ``script`` writes to stderr, run in a Python process of its own (the logging
    set-up is the process's: pytest's own would be in the way)."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return done.stderr


def test_library_warnings_become_redacted_json_lines() -> None:
    # In a process of its own: pytest captures warnings itself.
    script = (
        "import warnings\n"
        "from services.common.logs import configure_logging, register_secret\n"
        "configure_logging(service='test')\n"
        "register_secret('s3cret-value-0042')\n"
        "warnings.warn('cannot reach http://u:s3cret-value-0042@qdrant:6333', UserWarning)\n"
    )
    stderr = _stderr_of(script)
    (line,) = stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["name"]) == ("WARNING", "py.warnings")
    assert record["service"] == "test"
    assert "cannot reach" in record["message"] and "s3cret" not in line


def test_a_url_query_credential_is_redacted() -> None:
    line = redact('POST https://llm.example/v1/chat?alt=json&key=AIzaSyA-0042xyz "200"')
    assert "AIzaSyA" not in line and "alt=json" in line and "&key=[REDACTED]" in line


def test_httpx2_request_lines_are_not_logged_at_info() -> None:
    """The same for httpx2, the HTTP client the generation service's OpenAI SDK uses: its
    logger is "httpx2", which the quieting of "httpx" left at INFO, so every LLM call of
    a service at the default level logged "HTTP Request: POST http://…/chat/completions"."""
    script = (
        "import http.server, threading, httpx2\n"
        "from services.common.logs import configure_logging\n"
        "configure_logging(service='test')\n"
        "class Quiet(http.server.BaseHTTPRequestHandler):\n"
        "    def log_message(self, *args): pass\n"
        "server = http.server.HTTPServer(('127.0.0.1', 0), Quiet)\n"
        "threading.Thread(target=server.handle_request, daemon=True).start()\n"
        "httpx2.get(f'http://127.0.0.1:{server.server_port}/v1?key=s3cret-value-0042')\n"
    )
    stderr = _stderr_of(script)
    assert "s3cret" not in stderr
    assert '"httpx2"' not in stderr and "HTTP Request" not in stderr, stderr


def test_httpx_request_lines_are_not_logged_at_info() -> None:
    """httpx logs each request's URL at INFO: one line per hit of a fan-out, and a
    provider's URL may carry its key. A real request in a process of its own."""
    script = (
        "import http.server, threading, httpx\n"
        "from services.common.logs import configure_logging\n"
        "configure_logging(service='test')\n"
        "class Quiet(http.server.BaseHTTPRequestHandler):\n"
        "    def log_message(self, *args): pass\n"
        "server = http.server.HTTPServer(('127.0.0.1', 0), Quiet)\n"
        "threading.Thread(target=server.handle_request, daemon=True).start()\n"
        "httpx.get(f'http://127.0.0.1:{server.server_port}/v1?key=s3cret-value-0042')\n"
    )
    stderr = _stderr_of(script)
    assert "s3cret" not in stderr
    assert '"httpx"' not in stderr, stderr
