"""``gensearch``: run the stack, and talk to it over gRPC.

Every command but ``up`` is a gRPC client of the gateway (one address, one key). Results
go to stdout (tables, or JSON with ``--json``); errors are one line on stderr and a
non-zero exit code, never a traceback (set ``GENSEARCH_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib.metadata
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from gensearch.client import GensearchError

# Only the light parts: the services themselves are imported by `up` when it starts them.
from services.cli import admin, conversations, importer, query, stack
from services.cli.client import (
    Client,
    CliError,
    Connection,
    UsageError,
    describe_error,
    seconds,
)
from services.cli.output import PrintableStream, printable
from services.common import suggest

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]
# A long option as a help text writes it: "--near-text", "--llm-key".
_LONG_OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


# argparse's refusal of a value that is not one of an argument's choices (a subcommand,
# `--vectorizer`): "invalid choice: 'colections' (choose from 'up', 'status', …)". Newer
# Pythons write the choices without quotes, so both are read.
_INVALID_CHOICE = re.compile(
    r"invalid choice: (?P<value>'[^']*'|\S+) \(choose from (?P<choices>.*)\)$"
)


def _suggest_choice(message: str) -> str:
    """argparse's message with the closest choice named after the mistyped value, as a
    mistyped flag's is (`gensearch colections list` listed every command and left the
    reader to spot the one meant)."""
    found = _INVALID_CHOICE.search(message)
    if found is None:
        return message
    value = found["value"].strip("'")
    choices = [choice.strip().strip("'") for choice in found["choices"].split(",")]
    close = suggest.closest(value, choices)
    if close is None:
        return message
    at = found.start("choices") - len("(choose from ")
    return f"{message[:at]}(did you mean '{close}'?; choose from {found['choices']})"


def version() -> str:
    """The installed distribution's version (the source tree's, when not installed)."""
    try:
        return importlib.metadata.version("gensearch")
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


class UsageMistake(SystemExit):
    """A usage error met while parsing: ``Parser.parse_args`` prints it as one line (or,
    when a flag was mistyped, names that flag instead)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(2)
        self.parser, self.message = parser, message

    def line(self, parser: argparse.ArgumentParser | None = None) -> str:
        return f"error: {self.message} (see: {(parser or self.parser).prog} --help)"


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too, pointing at --help."""

    # Its subcommands by name (``add_subparsers`` below), for ``mistyped_flag``.
    commands: dict[str, argparse.ArgumentParser]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Long options added to the parser itself (not through a group), so the hidden ones
        # (help=SUPPRESS) are known too: argparse keeps its actions private, and its help
        # lists only the shown ones. Set first: argparse's own __init__ adds --help.
        self.direct_options: set[str] = set()
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageMistake(self, _suggest_choice(message))

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().parse_args(argv, namespace)
        except UsageMistake as mistake:
            # Arguments left over are found by this parser, after the command's own parser
            # has finished: the help to read is the command's (`ask -c X "q" extra`).
            leftover = mistake.message.startswith("unrecognized arguments")
            line = mistake.line(self.command_parser(argv) if leftover else None)
            self.exit(2, (self.mistyped_flag(argv) or line) + "\n")

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        self.direct_options.update(a for a in args if isinstance(a, str) and a.startswith("--"))
        return super().add_argument(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices
        return action

    def options(self) -> set[str]:
        """The long options this parser takes: as its help lists them, and those added to
        it directly. One merely named in some help text counts too (then a typo of it gets
        argparse's own message, as before)."""
        return set(_LONG_OPTION.findall(self.format_help())) | self.direct_options

    def command_parser(self, argv: Sequence[str]) -> argparse.ArgumentParser:
        """The parser of the (sub)command ``argv`` names, this one when it names none."""
        parser: argparse.ArgumentParser = self
        for token in argv:
            if token == "--":
                break
            commands = getattr(parser, "commands", {})
            if token in commands:
                parser = commands[token]
        return parser

    def mistyped_flag(self, argv: Sequence[str]) -> str | None:
        """When parsing failed: the usage line for a ``--flag`` that no parser on the
        command's path takes, naming it (with the nearest option when one is close) and the
        help of the command it was given to. argparse reports an unknown flag last, after
        everything else: ``search -c Books --keywrd x`` said that one of --near-text,
        --keyword … is required, ``--adress 1:2 status`` that '1:2' is not a command, and
        ``search … --limt 3`` pointed at ``gensearch --help``, which lists no search flag."""
        parser: argparse.ArgumentParser = self
        known = self.options()
        for token in argv:
            if token == "--":
                return None
            commands = getattr(parser, "commands", {})
            if token in commands:
                parser = commands[token]
                known |= parser.options() if isinstance(parser, Parser) else set()
                continue
            if not token.startswith("--") or len(token) < 3:
                continue
            name = token.split("=", 1)[0]
            # argparse takes a unique prefix of an option (allow_abbrev): left to it.
            if any(option.startswith(name) for option in known):
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"error: unrecognized argument {name}{hint} (see: {parser.prog} --help)"
        return None


def _client_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection and output flags, accepted before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--address",
        default=default,
        help="gateway host:port (env GENSEARCH_ADDRESS, default 127.0.0.1:50050)",
    )
    group.add_argument(
        "--api-key",
        default=default,
        help="API key sent as 'authorization: Bearer' (env GENSEARCH_API_KEY)",
    )
    group.add_argument(
        "--llm-key",
        action="append",
        default=default if suppress else [],
        metavar="PROVIDER=KEY",
        help="LLM provider key for this call, sent as x-PROVIDER-api-key (repeatable)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default if suppress else False,
        help="print JSON for scripts instead of tables",
    )
    group.add_argument(
        "--timeout",
        type=seconds,
        default=default,
        metavar="SECONDS",
        help="deadline of each call (default: per command); for ask also the answer "
        "budget (default: the gateway's GENSEARCH_GATEWAY_ASK_TIMEOUT, 30 s)",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="gensearch",
        description="Generative and conversational search over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"gensearch {version()}")
    _client_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        _client_options(p, suppress=True)
        return p

    up = sub.add_parser(
        "up",
        help="run the whole stack in the foreground (Ctrl-C stops it)",
        description="Run Redis, the vector store, the embedding model, the local LLM server "
        "and the four services in one foreground process; Ctrl-C stops everything.",
    )
    stack.add_arguments(up)

    status = command("status", "health of the gateway and the services behind it")
    admin.add_status_arguments(status)

    cols = command("collections", "create, list, show or delete collections")
    admin.add_collection_arguments(cols, _client_options)

    imp = command("import", "load objects from a JSON Lines file")
    importer.add_arguments(imp)

    search = command("search", "search a collection, optionally generating on the hits")
    query.add_search_arguments(search)

    gen = command(
        "generate",
        "generate on objects named by id or given inline (no search): a prompt per object "
        "and/or one over all",
    )
    query.add_generate_on_objects_arguments(gen)

    ask = command("ask", "ask a question about a collection; continues the last conversation")
    query.add_ask_arguments(ask)

    convs = command("conversations", "list, show or delete your conversations")
    conversations.add_arguments(convs, _client_options)
    return parser


HANDLERS: dict[str, Handler] = {
    "status": admin.status,
    "collections": admin.collections,
    "import": importer.run,
    "search": query.search,
    "generate": query.generate_on_objects,
    "ask": query.ask,
    "conversations": conversations.run,
}


async def _run_client(handler: Handler, args: argparse.Namespace) -> int:
    conn = Connection.from_env(
        address=args.address,
        api_key=args.api_key,
        llm_keys=args.llm_key or (),
        timeout=args.timeout,
    )
    out = sys.stdout
    if not args.json:  # (JSON escapes control characters itself, and scripts want it exact)
        sys.stdout = PrintableStream(out)  # type: ignore[assignment]
    try:
        async with Client(conn) as client:
            try:
                return await handler(client, args)
            except GensearchError as err:
                raise CliError(describe_error(err, conn.address)) from None
    finally:
        sys.stdout = out


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else 1
    if args.command == "up":
        _refuse_client_options(args)
        return stack.main(args)
    return asyncio.run(_run_client(HANDLERS[args.command], args))


def _refuse_client_options(args: argparse.Namespace) -> None:
    """The connection flags are accepted before any command, but ``up`` sends no call of
    the user's: given with it they did nothing, silently (a ``--llm-key`` there left every
    generation of the stack without a key)."""
    given = [
        flag
        for flag, value in (
            ("--address", args.address),
            ("--api-key", args.api_key),
            ("--llm-key", args.llm_key),
            ("--json", args.json),
            ("--timeout", args.timeout),
        )
        if value
    ]
    if not given:
        return
    hint = (
        "; up passes a provider's key from the environment to the generation service, "
        "e.g. OPENAI_API_KEY=sk-... gensearch up --llm-provider openai"
        if "--llm-key" in given
        else ""
    )
    raise UsageError(
        f"{', '.join(given)}: for the commands that call a running stack (search, ask, "
        f"status, ...), not for up{hint} (see: gensearch up --help)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except CliError as err:
        _error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # `gensearch ... | head`: the reader left; nothing worth saying.
        return 1
    except Exception as err:
        if os.environ.get("GENSEARCH_DEBUG"):
            traceback.print_exc()
        _error(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        return 1


def _error(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"error: {printable(' '.join(message.split()))}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
