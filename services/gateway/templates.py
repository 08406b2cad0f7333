"""Prompt templates: ``{property}`` placeholders filled from a hit, ``{{``/``}}`` literal.

A template is parsed and checked against the collection's schema once, before any LLM
call; rendering then happens per hit and fails only for that hit.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, quote
from services.common.suggest import did_you_mean
from services.common.values import MAX_EXACT_INTEGER

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Placeholder:
    name: str


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[str | Placeholder, ...]

    @property
    def properties(self) -> tuple[str, ...]:
        """Placeholder names in order of first appearance."""
        seen: dict[str, None] = {}
        for part in self.parts:
            if isinstance(part, Placeholder):
                seen.setdefault(part.name)
        return tuple(seen)


class MissingProperty(FailedPrecondition):
    """A hit lacks (or has an empty) property the template needs."""

    default_reason = "MISSING_PROPERTY"


class BlankPrompt(FailedPrecondition):
    """A hit's values leave its prompt with no text (only spaces and line breaks): the
    generation service refuses a blank message, naming ``messages[0].content``, a field
    the gateway's caller never sent, after the call was admitted (and charged)."""

    default_reason = "BLANK_PROMPT"


class PromptTooLong(InvalidArgument):
    """A hit's values would make its prompt longer than ``max_chars``: a 32,000-character
    template repeating one 64 KiB property thousands of times renders gigabytes."""

    default_reason = "PROMPT_TOO_LONG"


# Parsed templates kept by (source, field): a request's template is asked for by its checks
# and by its plan, and a repeated search (the generation cache's common case) sends the
# same one again. Templates are immutable, so sharing them is safe; errors are not kept.
PARSED_TEMPLATES = 128
MAX_RENDERED_SETTING = "GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS"
MAX_REQUEST_SETTING = "GENSEARCH_GATEWAY_MAX_RENDERED_REQUEST_CHARS"


@functools.lru_cache(maxsize=PARSED_TEMPLATES)
def parse(source: str, *, field: str) -> Template:
    """Split ``source`` into literal text and placeholders; bad syntax is INVALID_ARGUMENT."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "{":
            if source.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = source.find("}", i + 1)
            if end < 0:
                raise InvalidArgument(
                    f"unclosed '{{' at position {i}; write '{{{{' for a literal brace",
                    field=field,
                    reason="INVALID_TEMPLATE",
                )
            name = source[i + 1 : end]
            if not _NAME.fullmatch(name):
                raise InvalidArgument(
                    f"invalid placeholder {quote('{' + name + '}')} at position {i}: expected "
                    "a property name; write '{{' and '}}' for literal braces",
                    field=field,
                    reason="INVALID_TEMPLATE",
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(name))
            i = end + 1
        elif ch == "}":
            if source.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise InvalidArgument(
                f"unmatched '}}' at position {i}; write '}}}}' for a literal brace",
                field=field,
                reason="INVALID_TEMPLATE",
            )
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def check_single_prompt(
    template: Template, schema: Collection[str], *, field: str, owner: str = "the collection has"
) -> None:
    """A per-hit template (parsed once, by the caller) must name at least one property, and
    only known ones (``owner`` says whose properties ``schema`` lists, in the message)."""
    if not template.properties:
        raise InvalidArgument(
            "single_prompt has no {property} placeholder: every hit would get the same "
            "prompt; use grouped_task for one call over all hits",
            field=field,
            reason="NO_PLACEHOLDER",
        )
    check_known(template.properties, schema, field=field, owner=owner)


def check_known(
    names: Collection[str],
    schema: Collection[str],
    *,
    field: str,
    owner: str = "the collection has",
) -> None:
    unknown = [name for name in names if name not in schema]
    if unknown:
        # ``schema`` is the caller's own collection's (or its inline objects'): the
        # suggestion names nothing it could not read.
        hint, suggestion = did_you_mean(unknown[0], schema)
        raise InvalidArgument(
            f"unknown property {quote(unknown[0])}: {owner} {_listed(schema)}{hint}",
            field=field,
            reason="UNKNOWN_PROPERTY",
            metadata={"property": unknown[0], **suggestion},
        )


# Names a refusal lists at most: the message is cut at 1024 characters anyway, and a
# caller's inline objects may hold ~190,000 names, whose sort alone took 0.2 s of the
# event loop.
_MAX_LISTED = 50


def _listed(schema: Collection[str]) -> str:
    """The known names in order, the first ``_MAX_LISTED`` of them and how many there are."""
    if not schema:
        return "no properties"
    first = heapq.nsmallest(_MAX_LISTED, schema)
    more = f" … ({len(schema)} in all)" if len(schema) > len(first) else ""
    return ", ".join(first) + more


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def to_text(value: Any) -> str:
    """Text as it is; anything else JSON-encoded (integral numbers without '.0', since
    protobuf Struct carries every number as a double)."""
    if isinstance(value, str):
        return value
    return json.dumps(_plain(value), ensure_ascii=False)


def _plain(value: Any) -> Any:
    # 2^53 itself is exact as a number (int properties refuse it: 2^53 + 1 arrives as it).
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INTEGER:
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def render(template: Template, properties: Mapping[str, Any], *, max_chars: int, field: str) -> str:
    """The prompt for one hit; PromptTooLong as soon as it would pass ``max_chars``,
    before it is built, so a hit never costs more memory than that; MissingProperty for a
    value missing or empty, BlankPrompt when the values leave the whole prompt blank (the
    template's text is only spaces too). Each names ``field``, the template's."""
    out: list[str] = []
    texts: dict[str, str] = {}  # each property encoded once, however often it is named
    size = 0
    for part in template.parts:
        if isinstance(part, str):
            text = part
        elif part.name in texts:
            text = texts[part.name]
        else:
            value = properties.get(part.name)
            if is_empty(value):
                raise MissingProperty(
                    f"the hit has no value for property {part.name!r} used in the template",
                    field=field,
                    metadata={"property": part.name},
                )
            text = texts[part.name] = to_text(value)
        size += len(text)
        if size > max_chars:
            raise PromptTooLong(
                f"the hit's prompt would be longer than {max_chars} characters "
                f"({MAX_RENDERED_SETTING})",
                field=field,
                metadata={"max_chars": str(max_chars), "setting": MAX_RENDERED_SETTING},
            )
        out.append(text)
    prompt = "".join(out)
    if not prompt.strip():  # as the generation service tests a message's content
        raise _blank(list(texts), field)
    return prompt


def over_request_budget(chars: int, max_chars: int, *, field: str) -> PromptTooLong:
    """A hit's error when its prompt would take its request's prompts together past
    ``max_chars`` (``max_rendered_request_chars``): one request's fan-out costs at most
    that much memory and upstream input, whatever its template repeats."""
    return PromptTooLong(
        f"the request's prompts together would pass {max_chars} characters "
        f"({MAX_REQUEST_SETTING}) with this hit's {chars}: fewer hits (limit) or a "
        "shorter template",
        field=field,
        metadata={"max_chars": str(max_chars), "chars": str(chars), "setting": MAX_REQUEST_SETTING},
    )


def _blank(names: list[str], field: str) -> BlankPrompt:
    """The hit's error for a prompt its values (``names``, in order) left blank."""
    if not names:  # a template with no placeholder (check_single_prompt refuses those)
        return BlankPrompt("the template renders a blank prompt", field=field)
    one = len(names) == 1
    return BlankPrompt(
        f"the hit's prompt is blank: its {'value' if one else 'values'} for "
        f"{', '.join(repr(name) for name in names)} used in the template "
        f"{'holds' if one else 'hold'} only whitespace (spaces, tabs, line breaks)",
        field=field,
        metadata={"property": names[0], "properties": ",".join(names)},
    )
