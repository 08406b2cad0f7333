"""The TypeScript and Go programs find the gateway and the caller's key under the names the
Python client and CLI read, GENSEARCH_ADDRESS (host:port) and GENSEARCH_API_KEY, as
docs/clients.md shows them; the former names (GENSEARCH_URL, GENSEARCH_ADDR, GENSEARCH_KEY)
still work for one release, with a warning on stderr. Before, each language read its own
names, and a shell set up for the CLI sent the examples to localhost:50050 without a key.
(Every other test of tests/clients runs the programs with the new names too: program_env.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from tests.clients.conftest import NOWHERE, ROOT, go_build, start_program
from tests.gateway.conftest import StackFactory

KEY = "key-alice-123"
# A shell of no gensearch variables, as a newcomer's: the test sets each one it means.
BARE = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}


async def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of a program left to end by itself."""
    proc = await start_program(argv, {**BARE, **env})
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def warned(err: str, old: str, new: str) -> bool:
    return f"{old} is deprecated and goes in the next release: set {new}" in err


@pytest.mark.slow  # compiles TypeScript
async def test_typescript_reads_the_python_clients_names(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    """errors.js (a call alice's key lets through, refused BAD_NAME) with the gateway as
    host:port, as the CLI takes it, and as a URL; the deprecated names beside them point
    nowhere with a wrong key, so only the new names reach the gateway."""
    stack = await stack_factory()
    errors = [node, str(typescript_build / "errors.js")]
    host_port = f"127.0.0.1:{stack.gateway.port}"
    for address in (host_port, f"http://{host_port}"):
        status, out, err = await run(
            errors,
            {"GENSEARCH_ADDRESS": address, "GENSEARCH_API_KEY": KEY,
             "GENSEARCH_URL": f"http://{NOWHERE}", "GENSEARCH_KEY": "key-wrong"},
        )  # fmt: skip
        assert status == 0, out + err
        assert json.loads(out)["reason"] == "BAD_NAME", (address, out, err)
        assert "deprecated" not in err, err


@pytest.mark.slow  # compiles TypeScript
async def test_typescript_still_reads_the_deprecated_names_with_a_warning(
    stack_factory: StackFactory, node: str, typescript_build: Path
) -> None:
    stack = await stack_factory()
    status, out, err = await run(
        [node, str(typescript_build / "errors.js")],
        {"GENSEARCH_URL": f"http://127.0.0.1:{stack.gateway.port}", "GENSEARCH_KEY": KEY},
    )
    assert status == 0, out + err
    assert json.loads(out)["reason"] == "BAD_NAME", out + err
    assert warned(err, "GENSEARCH_URL", "GENSEARCH_ADDRESS"), err
    assert warned(err, "GENSEARCH_KEY", "GENSEARCH_API_KEY"), err


@pytest.mark.slow  # compiles TypeScript
async def test_typescript_refuses_a_host_without_a_port_naming_the_variable(
    node: str, typescript_build: Path
) -> None:
    """Put behind http://, a bare host meant port 80: every call failed unavailable with
    no word of the variable. Refused at once, as the Python and Go clients refuse it."""
    status, out, err = await run(
        [node, str(typescript_build / "errors.js")], {"GENSEARCH_ADDRESS": "localhost"}
    )
    assert status == 2, out + err
    assert 'GENSEARCH_ADDRESS "localhost" has no port' in err, err
    assert "    at " not in err, err  # a line, not a stack trace


@pytest.fixture(scope="module")
def go_example(gopath: Path) -> Path:
    return go_build(gopath, "example")


@pytest.mark.slow  # compiles Go
async def test_go_still_reads_the_deprecated_names_with_a_warning(go_example: Path) -> None:
    """The example dials the address GENSEARCH_ADDR names (nothing listens there: its first
    call fails naming it), saying which names replace the two it read. The new names at
    work: test_go.py, through program_env."""
    status, out, err = await run(
        [str(go_example)], {"GENSEARCH_ADDR": NOWHERE, "GENSEARCH_KEY": KEY}
    )
    assert status != 0 and NOWHERE in err, out + err
    assert warned(err, "GENSEARCH_ADDR", "GENSEARCH_ADDRESS"), err
    assert warned(err, "GENSEARCH_KEY", "GENSEARCH_API_KEY"), err


@pytest.mark.slow  # compiles Go
async def test_go_refuses_a_url_for_an_address_naming_the_variable(go_example: Path) -> None:
    """A URL (the TypeScript form) is no gRPC target: said at once, naming the variable,
    not an Unavailable from the resolver at the first call."""
    status, out, err = await run([str(go_example)], {"GENSEARCH_ADDRESS": f"http://{NOWHERE}"})
    assert status != 0, out + err
    assert "GENSEARCH_ADDRESS must be host:port" in err, err
    assert "Unavailable" not in err, err


@pytest.mark.slow  # compiles Go
async def test_go_refuses_a_host_without_a_port_naming_the_variable(go_example: Path) -> None:
    """gRPC dialled port 443 of a bare host, and the first call failed Unavailable after
    its timeout; the Python client and the gensearch command refuse it at once."""
    status, out, err = await run([str(go_example)], {"GENSEARCH_ADDRESS": "localhost"})
    assert status != 0, out + err
    assert 'GENSEARCH_ADDRESS "localhost" has no port' in err, err
    assert "Unavailable" not in err, err


# The former names, as a shell line sets them or a sentence names them.
_FORMER = re.compile(r"\bGENSEARCH_(?:ADDR|URL|KEY)\b")


def test_the_docs_show_the_clients_the_python_clients_names() -> None:
    """docs/clients.md and the README set GENSEARCH_ADDRESS and GENSEARCH_API_KEY for every
    client, and name the former names only where they say they are deprecated."""
    for doc in ("docs/clients.md", "README.md"):
        for paragraph in (ROOT / doc).read_text(encoding="utf-8").split("\n\n"):
            assert not _FORMER.search(paragraph) or "deprecated" in paragraph, (doc, paragraph)
    clients = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    assert "GENSEARCH_ADDRESS=localhost:50050 node dist/example.js" in clients
    assert "GENSEARCH_ADDRESS=localhost:50050 /tmp/gensearch-example" in clients
