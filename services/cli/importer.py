"""``gensearch import FILE --collection C``: JSON Lines into a collection, streamed in batches.

Each line is one object: either ``{"id"?, "properties": {...}, "vector"?}`` or a bare
properties object. Lines that are not valid JSON objects are reported with their line number
and skipped; objects the service rejects come back as per-object errors, mapped to their
line. Neither stops the import, nor does the gateway's per-tenant write quota: the client's
``import_`` waits it out, and the import says so as it waits (``--no-wait-for-quota``:
it stops there instead, saying what it imported and from which line to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gensearch.client import DataObject
from gensearch.client.errors import QuotaExceededError
from gensearch.client.types import ObjectError, WriteResult

from services.cli.chunking import Chunker
from services.cli.client import Client, UsageError, int32
from services.cli.output import Progress, command_name, dump_json, note

ENVELOPE_KEYS = {"id", "properties", "vector"}
# Exit code when the import ran but some lines or objects were rejected.
PARTIAL = 2
# Exit code when --no-wait-for-quota stopped the import at the tenant's write quota.
STOPPED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON Lines file ('-' for stdin)")
    parser.add_argument("--collection", "-c", required=True)
    parser.add_argument("--batch-size", type=int32, default=100, help="objects per message")
    parser.add_argument(
        "--objects-per-call",
        type=int32,
        default=1000,
        help="objects per ImportObjects stream (each acknowledged before the next)",
    )
    parser.add_argument(
        "--no-wait-for-quota",
        dest="wait_for_quota",
        action="store_false",
        help="stop at the tenant's write quota instead of waiting for it, saying what was "
        f"imported and the line to resume from (exit code {STOPPED})",
    )
    parser.add_argument(
        "--show-errors", type=int32, default=20, metavar="N", help="errors listed (default 20)"
    )
    chunks = parser.add_argument_group(
        "chunking", "split a long text property into chunks (docs/cli.md#chunking)"
    )
    chunks.add_argument(
        "--chunk-property", metavar="NAME", help="the text property to split; off when absent"
    )
    chunks.add_argument(
        "--chunk-size", type=int32, default=1000, metavar="CHARS", help="characters per chunk"
    )
    chunks.add_argument(
        "--chunk-overlap",
        type=int32,
        default=100,
        metavar="CHARS",
        help="characters each chunk repeats from the one before (whole words)",
    )
    chunks.add_argument("--document-property", default="doc_id", help="set to the document key")
    chunks.add_argument("--order-property", default="chunk_index", help="set to the position")


def chunker_of(args: argparse.Namespace) -> Chunker | None:
    if not getattr(args, "chunk_property", None):
        return None
    chunker = Chunker(
        property=args.chunk_property,
        size=args.chunk_size,
        overlap=args.chunk_overlap,
        document_property=args.document_property,
        order_property=args.order_property,
    )
    problem = chunker.check()
    if problem:
        raise UsageError(problem)
    return chunker


@dataclass
class LineError:
    line: int
    message: str
    id: str = ""
    field: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        ident = f" (id {self.id})" if self.id else ""
        return f"line {self.line}: {where}{self.message}{ident}"


@dataclass
class ImportResult:
    received: int = 0
    imported: int = 0
    seconds: float = 0.0
    errors: list[LineError] = field(default_factory=list)
    # Objects the service rejected beyond those it listed (its max_import_errors).
    unlisted: int = 0
    # Seconds spent waiting for the tenant's objects-written quota (the gateway's).
    waited: float = 0.0
    # --no-wait-for-quota: the quota's error that stopped the import, and the line of the
    # first object the gateway did not take (None: every line was sent).
    stopped: QuotaExceededError | None = None
    resume_line: int | None = None

    @property
    def failed(self) -> int:
        return len(self.errors) + self.unlisted

    @property
    def rate(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


def parse_line(text: str) -> DataObject:
    """One JSON Lines record -> DataObject; ValueError with a readable message otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    envelope = isinstance(value.get("properties"), dict) and set(value) <= ENVELOPE_KEYS
    props = value["properties"] if envelope else value
    obj = DataObject(properties=dict(props))
    if envelope:
        ident = value.get("id")
        if ident is not None:
            if not isinstance(ident, str):
                raise ValueError("id must be a string")
            obj.id = ident
        vector = value.get("vector")
        if vector is not None:
            if not isinstance(vector, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in vector
            ):
                raise ValueError("vector must be a list of numbers")
            if not all(math.isfinite(x) for x in vector):
                raise ValueError("vector must hold finite numbers")
            obj.vector = [float(x) for x in vector]
    return obj


# What "surrogateescape" decodes a byte that is not UTF-8 to.
_UNDECODED = re.compile("[\udc80-\udcff]")


def read_objects(
    lines: Iterable[str], errors: list[LineError], chunker: Chunker | None = None
) -> Iterator[tuple[int, DataObject]]:
    """(line number, object) for every good line (each of its chunks with a ``chunker``);
    bad lines land in ``errors``."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if _UNDECODED.search(text):  # bytes that are not UTF-8 (open_input keeps them)
            errors.append(LineError(number, "not UTF-8 text"))
            continue
        try:
            obj = parse_line(text)
            objects = chunker.split(obj) if chunker is not None else [obj]
        except ValueError as err:
            errors.append(LineError(number, str(err)))
            continue
        for item in objects:
            yield number, item


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


async def import_objects(
    client: Client,
    collection: str,
    lines: Iterable[str],
    *,
    batch_size: int = 100,
    objects_per_call: int = 1000,
    progress: Progress | None = None,
    chunker: Chunker | None = None,
    wait_for_quota: bool = True,
    on_interrupt: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Stream the good lines in batches over ImportObjects (the client's ``import_``); map
    the per-object errors back to lines. The progress advances as each batch goes out.
    Cancelled (Ctrl-C), it calls ``on_interrupt`` with what the acknowledged streams
    imported and the first line none acknowledged, then lets the cancellation go on."""
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    result = ImportResult()
    started = time.perf_counter()
    line_of: list[int] = []  # object index -> line number

    def objects() -> Iterator[DataObject]:
        for number, obj in read_objects(lines, result.errors, chunker):
            line_of.append(number)
            yield obj

    def waiting(seconds: float, err: QuotaExceededError) -> None:
        result.waited += seconds
        line = quota_wait_line(
            seconds, err.metadata.get("limit", ""), err.metadata.get("quota", "")
        )
        if progress:
            progress.say(line, waiting=True)
        else:
            note(line)

    written = WriteResult()
    try:
        async for part in client.collections.get(collection).data.import_iter(
            objects(),
            batch_size=batch_size,
            objects_per_call=objects_per_call,
            timeout=client.timeout(None),
            on_sent=progress.advance if progress else None,
            wait_for_quota=wait_for_quota,
            on_quota_wait=waiting,
        ):
            _add(written, part, 0)
    except QuotaExceededError as err:
        if wait_for_quota or "received_count" not in err.metadata or err.retry_delay is None:
            if progress:
                progress.abort()
            raise
        # Stopped where asked: earlier streams are whole parts, this one's received part
        # is in the error (positions from the stream's first object).
        offset = written.received
        _add(written, _stopped_part(err), offset)
        result.stopped = err
        first_left = written.received
        result.resume_line = line_of[first_left] if first_left < len(line_of) else None
        if progress:
            progress.abort()
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Ctrl-C: the streams acknowledged so far are written; the one under way may be in
        # part. Said before the exception goes on, or the user is left with "interrupted".
        if progress:
            progress.abort()
        if on_interrupt is not None:
            result.received, result.imported = written.received, written.imported
            first_left = written.received
            result.resume_line = line_of[first_left] if first_left < len(line_of) else None
            on_interrupt(result)
        raise
    except BaseException:
        if progress:
            progress.abort()
        raise
    else:
        if progress:  # every line read, malformed ones included
            progress.finish(len(line_of) + len(result.errors))
    result.received, result.imported = written.received, written.imported
    result.unlisted = written.received - written.imported - len(written.errors)
    for error in written.errors:
        line = line_of[error.index] if 0 <= error.index < len(line_of) else -1
        result.errors.append(LineError(line, error.message, error.id, error.field))
    result.seconds = time.perf_counter() - started
    result.errors.sort(key=lambda e: e.line)
    return result


def _add(total: WriteResult, part: WriteResult, offset: int) -> None:
    total.received += part.received
    total.imported += part.imported
    total.errors.extend(dataclasses.replace(e, index=offset + e.index) for e in part.errors)


def _stopped_part(err: QuotaExceededError) -> WriteResult:
    """What the stream the quota stopped wrote, as the error says: its counts, and its
    rejected objects with their reasons (or, past what fits in the error, positions)."""
    part = WriteResult(
        received=int(err.metadata["received_count"]),
        imported=int(err.metadata.get("imported_count", "0")),
        errors=list(err.object_errors),
    )
    listed = {e.index for e in part.errors}
    indexes, _ = err.rejected_indexes
    part.errors += [
        ObjectError(
            index=index,
            message="rejected; its reason did not fit in the quota's error "
            "(import this line alone to see why)",
        )
        for index in indexes
        if index not in listed
    ]
    return part


def open_input(name: str) -> tuple[IO[str], int | None]:
    """The file (or stdin for '-') and its number of non-blank lines when known."""
    # Bytes that are not UTF-8 are kept as lone surrogates ("surrogateescape") and made
    # that line's error by read_objects: strict decoding ended the whole import with a
    # UnicodeDecodeError naming no line.
    if name == "-":
        raw = getattr(sys.stdin, "buffer", None)
        if raw is None:  # a stdin replaced by text (tests, embedding): read as it is
            return sys.stdin, None
        return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape"), None
    path = Path(name)
    if path.is_dir():  # "no such file" would send the user looking for a typo
        raise UsageError(f"{name}: is a directory, not a JSON Lines file")
    if not path.is_file():
        raise UsageError(f"{name}: no such file")
    try:
        return path.open(encoding="utf-8", errors="surrogateescape"), _count_lines(path)
    except OSError as err:  # unreadable (permissions): one line, not a traceback class name
        raise UsageError(f"{name}: cannot be read ({err.strerror or type(err).__name__})") from None


def quota_wait_line(seconds: float, limit: str = "", quota: str = "") -> str:
    """What an import says as it waits for one of the tenant's write quotas."""
    return f"waiting {math.ceil(seconds)} s for the tenant's write quota{_per_minute(limit, quota)}"


def _per_minute(limit: str, quota: str) -> str:
    """`` (60,000 objects a minute)`` for a write quota's ErrorInfo ``limit``."""
    if not limit.isdigit():
        return ""
    amount = (
        f"{int(limit) / 2**20:,.0f} MiB"
        if quota == "bytes_written_per_minute"
        else f"{int(limit):,} objects"
    )
    return f" ({amount} a minute)"


def summary_line(
    imported: int, collection: str, seconds: float, rate: float, failed: int, waited: float = 0.0
) -> str:
    """The line a finished import prints: ``imported 1 object into Books in 0.1s …``
    (and how long it waited for the write quota, if it did)."""
    noun = "object" if imported == 1 else "objects"
    wait = f"; {waited:.0f}s of it waiting for the write quota" if waited else ""
    return (
        f"imported {imported} {noun} into {collection} in "
        f"{seconds:.1f}s ({rate:,.0f} objects/s{wait}); {failed} failed"
    )


async def run(client: Client, args: argparse.Namespace) -> int:
    chunker = chunker_of(args)
    handle, total = open_input(args.file)
    if chunker is not None:
        total = None  # lines are known, chunks are not

    def say_interrupted(cut: ImportResult) -> None:
        note(interrupted_line(cut, args))

    with handle:
        progress = None if args.json else Progress(total, label="importing")
        result = await import_objects(
            client,
            args.collection,
            handle,
            batch_size=args.batch_size,
            objects_per_call=args.objects_per_call,
            progress=progress,
            chunker=chunker,
            wait_for_quota=args.wait_for_quota,
            on_interrupt=say_interrupted if getattr(args, "say_resume", True) else None,
        )
    failed = result.failed
    if args.json:
        dump_json(
            {
                "collection": args.collection,
                "received": result.received,
                "imported": result.imported,
                "failed": failed,
                "seconds": round(result.seconds, 3),
                "objects_per_second": round(result.rate, 1),
                "quota_wait_seconds": round(result.waited, 3),
                "errors": [e.as_dict() for e in result.errors],
                **_stopped_json(result),
            }
        )
    else:
        print(
            summary_line(
                result.imported, args.collection, result.seconds, result.rate, failed, result.waited
            )
        )
        for err in result.errors[: args.show_errors]:
            note(f"  {err}")
        if len(result.errors) > args.show_errors:
            more = len(result.errors) - args.show_errors
            note(f"  ... and {more} more (--show-errors N, or --json)")
        if result.unlisted:
            note(
                f"  ... and {result.unlisted} more the service rejected without listing them "
                "(more than its GENSEARCH_RETRIEVAL_MAX_IMPORT_ERRORS in one call: "
                "lower --objects-per-call)"
            )
        if result.stopped is not None:
            note(stopped_line(result.stopped, result.resume_line, args.file, args.collection))
    if result.stopped is not None:
        return STOPPED
    return PARTIAL if failed else 0


def stopped_line(
    err: QuotaExceededError, resume_line: int | None, file: str, collection: str
) -> str:
    """What an import stopped at the write quota says: which quota, when it frees, and
    how to go on from the first line the gateway did not take."""
    per_minute = _per_minute(err.metadata.get("limit", ""), err.metadata.get("quota", ""))
    stop = (
        f"stopped at the tenant's write quota{per_minute}; "
        f"it frees in {math.ceil(err.retry_delay or 0)} s"
    )
    if resume_line is None:
        return f"{stop}; every line was sent"
    command = f"{command_name()} import - --collection {shlex.quote(collection)}"
    if file == "-":
        return f"{stop}; to resume, send the input from its line {resume_line} on: {command}"
    return f"{stop}; to resume: tail -n +{resume_line} {shlex.quote(file)} | {command}"


def interrupted_line(result: ImportResult, args: argparse.Namespace) -> str:
    """What an import stopped by Ctrl-C says: what is surely written, and how to go on.

    Objects of the stream under way when it stopped may be written or not; an object
    without an id among them is written again, under a new id, when it is sent again."""
    noun = "object" if result.imported == 1 else "objects"
    done = f"interrupted: {result.imported} {noun} imported into {args.collection} for sure"
    if result.resume_line is None:
        return f"{done}; every line was acknowledged"
    line = result.resume_line
    resume = f"{command_name()} import - --collection {shlex.quote(args.collection)}"
    where = (
        f", send the input from its line {line} on: {resume}"
        if args.file == "-"
        else f": tail -n +{line} {shlex.quote(args.file)} | {resume}"
    )
    return (
        f"{done} (lines before {line}); lines from {line} on may be written in part "
        f"(sent again, one without an id is written twice); to resume{where}"
    )


def _stopped_json(result: ImportResult) -> dict[str, Any]:
    if result.stopped is None:
        return {}
    err = result.stopped
    return {
        "stopped_at_quota": {
            "quota": err.metadata.get("quota", ""),
            "limit": int(err.metadata.get("limit", "0") or 0),
            "retry_after_seconds": err.retry_delay,
            "resume_line": result.resume_line,
        }
    }
