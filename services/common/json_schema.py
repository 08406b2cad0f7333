"""JSON Schemas callers send for structured output: checked up front, and model outputs
validated against them, with the ``jsonschema`` library (draft 2020-12).

A schema is a caller's input like any other: its size and nesting are bounded before the
library sees it, it must be a valid schema (the metaschema decides), and its root must be
an object schema (the validated output travels as a ``google.protobuf.Struct``, which is
an object, and OpenAI's structured outputs require an object root as well). ``$ref`` may
only point inside the schema: the validator is given an empty registry, so a reference to
a URL is an unresolvable reference, never a fetch.

A schema's regular expressions (``pattern``, ``patternProperties``) run on the model's
answer, which a caller can steer: ``^(a|a)+$`` against 30 ``a``s and a ``!`` backtracks for
minutes in Python's ``re``, which holds the GIL and so would stop the whole service. They
run on the ``regex`` package instead, which takes a timeout and releases the GIL, within a
time budget per validation (``SchemaLimits.pattern_seconds``); answers are validated on
a thread tenants take turns on (``parse_output_async``). ``unevaluatedProperties`` beside
``patternProperties`` is refused: jsonschema matches those patterns with ``re`` internally.
``uniqueItems`` is checked by hashing: the library compares pairwise, quadratic in an
answer's length. ``regex`` compiles a counted repeat by writing it out (``x{10000000}``
takes 2.8 GB, with no timeout), so every pattern is measured up front
(``pattern_problem``: its atoms with their counted repeats multiplied out, at most
``MAX_PATTERN_SIZE`` each and ``MAX_SCHEMA_PATTERNS_SIZE`` together; Python's ``(?#…)``
comments and ``(?x)`` verbose mode, which hide what a count repeats, are refused) and
compiled once when the schema is accepted. A literal ``{`` must be escaped: ``a{e<=1}`` is
text to ``re`` but fuzzy matching to ``regex``.

The gate reads patterns as the matcher does: the metaschema's ``"format": "regex"`` check
compiles them with ``regex`` and ``PATTERN_FLAGS`` (not jsonschema's ``re``), so a pattern
is accepted exactly when the matcher can use it, and means what the matcher makes of it
(``[[:alpha:]]`` is a POSIX class to ``regex``, a ``[``-class and a ``]`` to ``re``).
Every bound a caller's schema can meet is a setting of the service checking it
(``SchemaLimits``; docs/generation.md, docs/gateway.md); a refusal names the field and
carries the bound (``max_…``) and the setting in its ErrorInfo metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import regex
from google.protobuf import json_format, struct_pb2
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from services.common.errors import InvalidArgument, MissingField, seconds_text
from services.common.fair_executor import FairExecutor
from services.common.text import clean_text
from services.common.values import check_value

INVALID_SCHEMA = "INVALID_SCHEMA"
# Validators of schemas already accepted, by their canonical JSON: checking a schema
# against the metaschema costs ~1.5 ms, and a fan-out of N hits sends the same schema N
# times (measured 2026-12-02 under load; a cached lookup is the cost of one json.dumps).
# A constant: it refuses nothing (a schema past it is checked again), and it bounds memory.
MAX_CACHED = 256
_accepted: OrderedDict[tuple[str, tuple[int, ...]], Draft202012Validator] = OrderedDict()
# When the validation under way must stop matching patterns (time.monotonic()).
_pattern_deadline: ContextVar[float] = ContextVar("pattern_deadline", default=math.inf)
# When the validation under way must stop altogether (time.monotonic()).
_validate_deadline: ContextVar[float] = ContextVar("validate_deadline", default=math.inf)
VALIDATE_SETTING = "GENSEARCH_GENERATION_SCHEMA_VALIDATE_SECONDS"
# Characters of a validation error quoted back (to the caller and to the model). Kept a
# constant: it shortens a message, it refuses nothing.
MAX_ERROR_CHARS = 400
# Nesting of an answer carried as a Struct: each JSON level is up to three protobuf
# levels (Struct, map entry, Value), and protobuf's decoders stop at 100 levels, which
# our responses' own messages share. A deeper answer cannot travel, so it is invalid.
# Kept a constant: it bounds the model's answer, not the caller's input, and no value
# above it could travel (a setting could only lower it).
MAX_OUTPUT_DEPTH = 32
# The bounds of a caller's schema below are settings of each service that checks one
# (SchemaLimits: GENSEARCH_GATEWAY_* and GENSEARCH_GENERATION_*); these are their defaults
# and the upper bounds of those settings (services/*/settings.py).
# Atoms of a pattern with its counted repeats multiplied out (``\d{3}-\d{4}``: 8; a UUID's
# pattern: ~40): what ``regex`` writes out when it compiles one, ~280 bytes each, kept in
# its cache of compiled patterns. Lengths belong in maxLength, not in ``.{0,5000}``.
MAX_PATTERN_SIZE = 1_000
# The same over all the patterns of one schema: compiling them holds the interpreter.
MAX_SCHEMA_PATTERNS_SIZE = 10_000
# Upper bound of both: ~280 bytes an atom, 28 MB compiled for one schema at most.
PATTERN_SIZE_CEILING = 100_000
# Subschemas applied in place one inside another ($ref -> $ref -> ..., allOf in allOf):
# each is a level of jsonschema's recursion, and a chain of ~500 passed Python's limit when
# an answer was validated (found only then: two charged calls, then INVALID_OUTPUT).
MAX_IN_PLACE_DEPTH = 100
# Groups nested in one pattern: Python's parsers (``re``'s, ``regex``'s) recurse once or
# more per group, and ~500 levels (a 1 KB pattern) passed the interpreter's recursion
# limit, the deeper the caller's stack the sooner.
MAX_PATTERN_NESTING = 100
# Upper bound of both nesting settings: well short of the ~500 that overflowed the stack.
NESTING_CEILING = 200
# Code points the ranges of a schema's character classes span together (in the Basic
# Multilingual Plane, beyond which nothing is walked): Python's ``re`` walked each code
# point of a range in Python to build the class (more still under ``(?i)``) when it
# compiled the patterns for the metaschema check, before any bound of ours applied: 7,000
# distinct ranges such as ``a-\uffff`` (56 KB of schema) held a CPU for most of a minute
# per request, every new variant as long again. ``regex`` compiles them now; the bound
# stays, counted before any engine sees a pattern. Sixteen ranges over the whole plane
# here; ``[a-z0-9_-]`` spans 36, ``[^"]`` none.
MAX_SCHEMA_CLASS_SPAN = 16 * 0x10000
# Upper bound of its setting: 256 ranges over the whole plane (~4x the default's cost).
CLASS_SPAN_CEILING = 256 * 0x10000
# The engine and flags every pattern is read with, by the gate (the metaschema's "regex"
# format) and by the matcher alike: ``regex``'s version 0 (re's syntax, closest to JSON
# Schema's ECMA-262; version 1's set operations such as ``[[a-z]--[aeiou]]`` are neither),
# named rather than left to the process-wide ``regex.DEFAULT_VERSION``. A pattern's own
# ``(?V1)`` is refused (``_measure``).
PATTERN_FLAGS = regex.VERSION0
_BMP_LAST = 0xFFFF
# A character-class escape naming one character by its code (``\x41``, ``\u0041``,
# ``\U00000041``) or in octal (``\101``, ``\0``).
_CODE_ESCAPE = re.compile(r"x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{1,3})")
# Escapes whose braces hold a name, not a count: a character (``\N{DIGIT ONE}``) or a
# Unicode property (``\p{L}``, ``\P{Lu}``; JSON Schema's ECMA-262 has them too).
_NAMED_ESCAPES = ("N{", "p{", "P{")
# Escapes of one control character (``\n`` ...) inside a class (``\b`` is backspace there).
_CONTROL_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
_COUNTED = re.compile(r"\{(\d*)(?:,(\d*))?\}")
# Inline flags (``(?i)``, ``(?x:``, ``regex``'s own ``(?fx)``, ``(?V1x)``): verbose mode
# makes spaces and ``#`` comments nothing, so what a count repeats is no longer the
# character before it.
_FLAGS = re.compile(r"\(\?[abefiLmprsuwxV01]*(?:-[abefiLmprsuwxV01]+)?[):]")
# Keywords whose values are data, not schemas: a "pattern" key inside them is no pattern.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
# Keywords whose value maps names to subschemas: the map itself is no subschema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
# The one dialect a schema may name ("$schema"), at its root only.
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# A response format's name, as OpenAI's structured outputs accept it.
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_FORMAT_NAME = "response"
# No nesting bound in schema_data's walk (check_schema has its own, MAX_SCHEMA_DEPTH).
_UNBOUNDED_DEPTH = 1 << 30


@dataclass(frozen=True)
class SchemaLimits:
    max_chars: int = 65_536
    max_depth: int = 32
    # Subschemas (objects and booleans outside data keywords): jsonschema's metaschema check
    # costs ~0.4 ms each, on the caller's thread. ``nodes_setting`` names the bound.
    max_nodes: int = 1000
    nodes_setting: str = "MAX_SCHEMA_NODES"
    # The bounds above the module's constants of the same meaning (their defaults).
    max_class_span: int = MAX_SCHEMA_CLASS_SPAN
    max_pattern_size: int = MAX_PATTERN_SIZE
    max_patterns_size: int = MAX_SCHEMA_PATTERNS_SIZE
    max_pattern_nesting: int = MAX_PATTERN_NESTING
    max_in_place_depth: int = MAX_IN_PLACE_DEPTH
    # The settings' namespace (``GENSEARCH_GATEWAY_``): a refusal names
    # ``<namespace>MAX_SCHEMA_CLASS_SPAN`` and the like.
    namespace: str = ""
    # Time one validation of an answer may spend matching the schema's patterns.
    pattern_seconds: float = 0.1
    # Time one validation of an answer may spend in all (anyOf branches that both recurse
    # take 2^depth steps: hours on a 30-level answer of 200 bytes).
    validate_seconds: float = 1.0


@dataclass(frozen=True)
class OutputSchema:
    """An accepted schema's validator, with the budgets of each validation."""

    validator: Draft202012Validator
    pattern_seconds: float
    validate_seconds: float = 1.0


class _PatternFailed(Exception):
    """A pattern that took longer than the budget, or that ``regex`` cannot compile."""


def _matches(pattern: str, text: str) -> bool:
    remaining = _pattern_deadline.get() - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        found = regex.search(pattern, text, flags=PATTERN_FLAGS, timeout=remaining, concurrent=True)
        return found is not None
    except TimeoutError:
        raise _PatternFailed(f"matching pattern {pattern!r} took longer than allowed") from None
    except regex.error as err:
        raise _PatternFailed(f"pattern {pattern!r} cannot be used: {err}") from None


# The keywords that match a caller's patterns, on `regex` with a budget; each one the
# library's own behaviour otherwise.
_LIBRARY = Draft202012Validator.VALIDATORS


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    patterns = schema.get("patternProperties")
    if patterns and validator.is_type(instance, "object"):
        # The library's check, given only the keys no pattern matches (by `regex`).
        named = schema.get("properties", {})
        instance = {
            key: value
            for key, value in instance.items()
            if key in named or not any(_matches(p, key) for p in patterns)
        }
        schema = {k: v for k, v in schema.items() if k != "patternProperties"}
    yield from _LIBRARY["additionalProperties"](validator, additional, instance, schema)


def _json_key(value: Any) -> Any:
    """A hashable stand-in for a JSON value, equal for values JSON Schema holds equal:
    1 and 1.0 alike (as Python's own numbers), true apart from 1, objects whatever their
    keys' order."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_json_key(v) for v in value))
    return ("string", value) if isinstance(value, str) else ("null", None)


def _unique_items(
    validator: Any, unique: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    # The library compares objects (and arrays) pairwise: an answer of 25,000 small
    # objects took minutes of CPU, mostly holding the GIL. Hashed instead: linear.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        key = _json_key(item)
        if key in seen:
            # The item, not the whole array: an answer's array may be a megabyte.
            yield ValidationError(
                f"the array has non-unique elements: item {index}, "
                f"{_short(repr(item)[:MAX_ERROR_CHARS])}, is an earlier one's repeat"
            )
            return
        seen.add(key)


class _TooSlow(Exception):
    """A validation that took longer than its budget (``validate_seconds``)."""


def _budgeted(keyword: Any) -> Any:
    """``keyword``'s validator, which first checks the validation's time budget: every
    descent into a subschema (``$ref``, ``anyOf``, ``properties``...) goes through one, so
    no schema makes a check run longer than the budget and one keyword's own work."""

    def check(
        validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if time.monotonic() > _validate_deadline.get():
            raise _TooSlow
        yield from keyword(validator, value, instance, schema) or ()

    return check


_KEYWORDS = {
    **_LIBRARY,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
_Validator = validators.extend(
    Draft202012Validator, {name: _budgeted(keyword) for name, keyword in _KEYWORDS.items()}
)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping as soon as it passes ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children: Any = ()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        stack.extend((child, depth + 1) for child in children)
    return deepest


@dataclass(frozen=True)
class _Refusal:
    """Why a pattern cannot be used, and the bound (and setting) it passed, if any."""

    why: str
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _bound(key: str, value: int, setting: str, limits: SchemaLimits) -> dict[str, str]:
    """A limit refusal's ErrorInfo metadata: the bound and the setting that sets it."""
    return {key: str(value), "setting": limits.namespace + setting}


def pattern_size(pattern: str, limits: SchemaLimits | None = None) -> int | str:
    """The size of ``pattern`` with its counted repeats written out, or why it cannot be
    measured: Python's comments ``(?#…)`` and verbose mode ``(?x)`` (neither is in JSON
    Schema's ECMA-262 dialect, and both hide what a count repeats), a brace ``regex``
    would read otherwise than ``re``, or groups nested deeper than ``limits`` allow. Made
    before any engine compiles the pattern: it may not be a valid one."""
    size = _measure(pattern, limits or SchemaLimits())
    return size.why if isinstance(size, _Refusal) else size


def _measure(pattern: str, limits: SchemaLimits) -> int | _Refusal:
    if "(?#" in pattern:
        return _Refusal("comments (?#...) are not supported")
    flags = "".join(found.group(0) for found in _FLAGS.finditer(pattern))
    if "x" in flags:
        return _Refusal("verbose mode (?x) is not supported")
    if "V1" in flags:
        # PATTERN_FLAGS names version 0; regex refuses both at once with a ValueError.
        return _Refusal("regex's version 1 syntax (?V1) is not supported")
    frames = [[0, 0]]  # per open group: its size so far, and the size of its last atom
    i = 0
    while i < len(pattern):
        char, atom = pattern[i], 1
        if char == "\\":
            i += 1
            if pattern[i : i + 2] in _NAMED_ESCAPES:  # \N{NAME}, \p{Letter}: one character
                closing = pattern.find("}", i)
                i = closing if closing >= 0 else len(pattern)
        elif char == "[":
            i = _class_end(pattern, i)
        elif char == "(":
            if len(frames) > limits.max_pattern_nesting:
                return _Refusal(
                    f"its groups nest deeper than {limits.max_pattern_nesting} levels",
                    _bound(
                        "max_nesting",
                        limits.max_pattern_nesting,
                        "MAX_SCHEMA_PATTERN_NESTING",
                        limits,
                    ),
                )
            frames.append([0, 0])
            i += 1
            continue
        elif char == ")" and len(frames) > 1:
            atom = max(1, frames.pop()[0])
        elif char == "{":
            counted = _COUNTED.match(pattern, i)
            if counted is None or counted.group(0) == "{}":
                return _Refusal("a literal '{' must be escaped as '\\{'")
            low, high = counted.group(1), counted.group(2)
            count = max(int(low or 0), int(high or 0))
            frame = frames[-1]
            frame[0] += frame[1] * (count - 1)
            frame[1] *= count
            if frame[0] > limits.max_patterns_size:
                break
            i = counted.end()
            continue
        elif char in "*+?|^$":
            i += 1
            continue
        frames[-1][0] += atom
        frames[-1][1] = atom
        i += 1
    return sum(frame[0] for frame in frames)


def pattern_problem(pattern: str, limits: SchemaLimits | None = None) -> str | None:
    """Why ``pattern`` cannot be matched safely (``pattern_size``), or None."""
    limits = limits or SchemaLimits()
    problem = _size_problem(_measure(pattern, limits), limits)
    return None if problem is None else problem.why


def _size_problem(size: int | _Refusal, limits: SchemaLimits) -> _Refusal | None:
    if isinstance(size, _Refusal):
        return size
    if size > limits.max_pattern_size:
        return _Refusal(
            f"its counted repeats make it larger than {limits.max_pattern_size} characters "
            "written out (bound lengths with maxLength)",
            _bound("max_size", limits.max_pattern_size, "MAX_SCHEMA_PATTERN_SIZE", limits),
        )
    return None


def _class_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the character class opened at ``start``."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":  # a ] right after [ or [^ is literal
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    # An unclosed class ending in a backslash stepped past the end: the compile refuses it.
    return min(i, len(pattern))


def class_span(pattern: str) -> int:
    """Code points (in the BMP) the ranges of ``pattern``'s character classes span: what
    ``re`` walked one by one when it compiled them (``max_class_span`` bounds it). A range
    whose ends are not single characters counts as the whole plane (an over-count at worst)."""
    total, i = 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[":
            end = _class_end(pattern, i)
            total += _ranges_span(pattern, i + 1, end)
            i = end + 1
        else:
            i += 1
    return total


def _ranges_span(pattern: str, start: int, end: int) -> int:
    """The span of the ranges of the class whose items are ``pattern[start:end]``."""
    i = start + 1 if pattern[start : start + 1] == "^" else start
    total = 0
    while i < end:
        low, i = _class_item(pattern, i, end)
        if pattern[i : i + 1] == "-" and i + 1 < end:
            high, i = _class_item(pattern, i + 1, end)
            if low is None or high is None:
                total += _BMP_LAST + 1
            else:
                total += max(0, min(high, _BMP_LAST) - low + 1)
    return total


def _class_item(pattern: str, i: int, end: int) -> tuple[int | None, int]:
    """The code point of the class item at ``i`` (None: not one character, as ``\\d``),
    and where the next item starts."""
    if pattern[i] != "\\" or i + 1 >= end:
        return ord(pattern[i]), i + 1
    escaped = pattern[i + 1]
    code = _CODE_ESCAPE.match(pattern, i + 1)
    if code is not None:
        hex_digits = code.group(1) or code.group(2) or code.group(3)
        value = int(hex_digits, 16) if hex_digits else int(code.group(4), 8)
        return value, code.end()
    if pattern[i + 1 : i + 3] in _NAMED_ESCAPES:  # \N{NAME}, \p{L}: not worth looking up
        closing = pattern.find("}", i)
        return None, (closing + 1 if 0 < closing < end else i + 2)
    if escaped.isalnum():
        return _CONTROL_ESCAPES.get(escaped), i + 2
    return ord(escaped), i + 2


def _check_class_spans(patterns: list[str], field: str, limits: SchemaLimits) -> None:
    """INVALID_ARGUMENT when the schema's character classes span more than
    ``limits.max_class_span`` code points together: made before any engine compiles them."""
    total = 0
    for pattern in patterns:
        total += class_span(pattern)
        if total > limits.max_class_span:
            raise InvalidArgument(
                f"not a valid JSON schema: the character classes of its patterns span more "
                f"than {limits.max_class_span} characters together (pattern "
                f"{_short(repr(pattern[:64]))}...): name fewer or narrower ranges",
                field=field,
                reason=INVALID_SCHEMA,
                metadata=_bound(
                    "max_class_span", limits.max_class_span, "MAX_SCHEMA_CLASS_SPAN", limits
                ),
            )


def _scan(schema: Any) -> tuple[list[str], set[str]]:
    """Every regular expression of ``schema`` ("pattern" values and "patternProperties"
    keys) and every keyword it uses, outside data keywords: one walk for both."""
    patterns: list[str] = []
    keywords: set[str] = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if key in _DATA_KEYWORDS:
                    continue
                keywords.add(key)
                if key == "pattern" and isinstance(child, str):
                    patterns.append(child)
                elif key == "patternProperties" and isinstance(child, dict):
                    patterns.extend(str(k) for k in child)
                stack.append(child)
    return patterns, keywords


def _more_nodes_than(schema: Mapping[str, Any], limit: int) -> bool:
    """Whether ``schema`` holds more than ``limit`` subschemas: objects and booleans
    outside data keywords (a keyword's boolean value counts too: an over-count at worst;
    a map of named subschemas, such as ``properties``, does not), the root included; the
    walk stops at the bound."""
    count = 0
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict | bool):
            count += 1
            if count > limit:
                return True
            if isinstance(item, dict):
                for key, child in item.items():
                    if key in _SCHEMA_MAPS and isinstance(child, dict):
                        stack.extend(child.values())
                    elif key not in _DATA_KEYWORDS:
                        stack.append(child)
    return False


def _check_dialect(schema: Mapping[str, Any], field: str) -> None:
    """The root's ``$schema`` is draft 2020-12 or absent; no subschema has one. jsonschema
    picks the validator of each subschema it enters (a "$ref" target too) by that
    subschema's own ``$schema``: the library's validator, not ours, which matches patterns
    with ``re``, holding the GIL with no budget."""
    root = schema.get("$schema")
    if root is not None and (not isinstance(root, str) or root.rstrip("#") != DRAFT_2020_12):
        raise InvalidArgument(
            f"$schema must be {DRAFT_2020_12!r} (or absent): schemas are draft 2020-12",
            field=field,
            reason=INVALID_SCHEMA,
        )
    stack: list[Any] = [value for key, value in schema.items() if key not in _DATA_KEYWORDS]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if key in _DATA_KEYWORDS:
                    continue
                # A string: the keyword (a property named "$schema" holds a subschema).
                if key == "$schema" and isinstance(child, str):
                    raise InvalidArgument(
                        "$schema is allowed only at the schema's root",
                        field=field,
                        reason=INVALID_SCHEMA,
                    )
                stack.append(child)


def _check_patterns(patterns: list[str], field: str, limits: SchemaLimits) -> None:
    """INVALID_ARGUMENT when a pattern is too large (or nests too deep) to compile
    safely: made before the metaschema check compiles them (``regex`` writes a counted
    repeat out, ``x{10000000}`` taking 2.8 GB, and its parser recurses per group)."""
    sizes = [(pattern, _measure(pattern, limits)) for pattern in patterns]
    if sum(size for _, size in sizes if isinstance(size, int)) > limits.max_patterns_size:
        raise InvalidArgument(
            "not a valid JSON schema: its patterns together are larger than "
            f"{limits.max_patterns_size} characters written out",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound(
                "max_size", limits.max_patterns_size, "MAX_SCHEMA_PATTERNS_SIZE", limits
            ),
        )
    for pattern, size in sizes:
        problem = _size_problem(size, limits)
        if problem is not None:
            raise InvalidArgument(
                f"not a valid JSON schema: pattern {_short(repr(pattern))}: {problem.why}",
                field=field,
                reason=INVALID_SCHEMA,
                metadata=dict(problem.metadata),
            )


def _compiles(pattern: object) -> bool:
    """The metaschema's "regex" format, by the engine and flags answers are matched with
    (jsonschema's own check compiles with ``re``, which reads some patterns otherwise)."""
    if isinstance(pattern, str):
        try:
            regex.compile(pattern, PATTERN_FLAGS)
        except ValueError as err:  # flags at odds with PATTERN_FLAGS: not a usable pattern
            raise regex.error(str(err)) from None
    return True


# Draft 2020-12's format checks, "regex" by ``_compiles`` (its error the format error).
_METASCHEMA_FORMATS = FormatChecker(formats=())
for _name, (_check, _raises) in Draft202012Validator.FORMAT_CHECKER.checkers.items():
    _METASCHEMA_FORMATS.checks(_name, _raises)(_check)
_METASCHEMA_FORMATS.checks("regex", regex.error)(_compiles)


def _remote_refs(value: Any) -> bool:
    """Whether any ``$ref`` / ``$dynamicRef`` points outside the schema."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in ("$ref", "$dynamicRef") and not str(child).startswith("#"):
                    return True
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _dangling_ref(schema: Mapping[str, Any]) -> str | None:
    """The first ``$ref`` / ``$dynamicRef`` that points to nothing in the schema (``#/$defs/
    missing``, an anchor no subschema declares), or None, each resolved against the base
    its nearest ``$id`` gives (``#/$defs/x`` under ``"$id": "urn:a"`` looks in that
    subschema). Found only at validation, it cost the caller two upstream calls (the
    answer and its corrective retry) and came back FAILED_PRECONDITION / INVALID_OUTPUT,
    as if the model were at fault."""
    _, nodes = _subschemas(schema)
    for node, resolver in nodes.values():
        for key in ("$ref", "$dynamicRef"):
            ref = node.get(key)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            # A pointer stepping into a list by a name ("#/required/x") or into a boolean
            # schema raises ValueError / TypeError from the pointer walk, not Unresolvable.
            except (Unresolvable, ValueError, TypeError, LookupError):
                return ref
    return None


# A referencing resolver (Registry.resolver()), a type the package does not export.
_Resolver = Any


def _inside(node: dict[str, Any], outer: _Resolver) -> _Resolver:
    """The resolver for the references in ``node``: a nested ``$id`` is a new base for
    them (relative to ``outer``'s), as validation resolves them. A ``$id`` that is no
    URI reference raises ValueError."""
    if isinstance(node.get("$id"), str):
        return outer.in_subresource(DRAFT202012.create_resource(node))
    return outer


def _subschemas(
    schema: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[int, tuple[dict[str, Any], _Resolver]]]:
    """The schema as its resource holds it, and each of its subschemas (by identity: a
    lookup returns these very dicts) with the resolver its references resolve against."""
    resource = DRAFT202012.create_resource(dict(schema))
    uri = resource.id() or ""
    root: dict[str, Any] = resource.contents
    nodes: dict[int, tuple[dict[str, Any], _Resolver]] = {}
    stack: list[tuple[Any, _Resolver]] = [
        (root, Registry().with_resource(uri, resource).resolver(base_uri=uri))
    ]
    while stack:
        item, resolver = stack.pop()
        if isinstance(item, list):
            stack.extend((child, resolver) for child in item)
        elif isinstance(item, dict):
            # The root's own $id is the registry's base already.
            resolver = resolver if item is root else _inside(item, resolver)
            nodes[id(item)] = (item, resolver)
            stack.extend((v, resolver) for k, v in item.items() if k not in _DATA_KEYWORDS)
    return root, nodes


def format_name(name: str, field: str) -> str:
    """A response format's ``name`` (empty: ``response``), or INVALID_ARGUMENT naming
    ``field``: the gateway checks it once before its fan-out, the generation service on
    every call."""
    name = name or DEFAULT_FORMAT_NAME
    if not _FORMAT_NAME.fullmatch(name):
        raise InvalidArgument(f"{field} must be 1-64 letters, digits, '_' or '-'", field=field)
    return name


# Serialized bytes a Struct takes per character of its JSON, at most: a number in a list
# takes 11 bytes and ``0,`` two characters (5.5); strings, keys, nesting take fewer (a
# nesting level's two length prefixes grow past one byte only around 128 bytes of
# content). So a Struct of more than this many times ``max_chars`` bytes is surely more
# than ``max_chars`` characters as JSON.
_MAX_BYTES_PER_CHAR = 8


def schema_data(schema: struct_pb2.Struct, field: str, limits: SchemaLimits) -> dict[str, Any]:
    """A schema sent as a ``Struct``, as JSON data. A NaN or ±Infinity in it (a Struct
    holds them, JSON does not: ``json_format`` raised ``ValueError``, an INTERNAL) is
    INVALID_ARGUMENT / NUMBER_NOT_FINITE naming where (``….json_schema.properties.x.maximum``).
    One surely past ``limits.max_chars`` is refused by its serialized size first, before
    it is read: reading a 3 MB one (within a request's bound) took 1.4 s of the event loop
    before ``check_schema`` refused it. Depth is ``check_schema``'s to bound, with its own
    message; protobuf's parser already stops a Struct far short of what this walk or
    ``MessageToDict`` could not handle."""
    size = schema.ByteSize()
    if size > _MAX_BYTES_PER_CHAR * limits.max_chars:
        raise InvalidArgument(
            f"the schema is {size} bytes serialized, more than {limits.max_chars} characters "
            "as JSON; at most that many are allowed",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound("max_chars", limits.max_chars, "MAX_SCHEMA_CHARS", limits),
        )
    check_value(schema, field, max_depth=_UNBOUNDED_DEPTH)
    data: dict[str, Any] = json_format.MessageToDict(schema)
    return data


# Keywords whose subschemas apply to the same value as the schema holding them (``$ref``
# and ``$dynamicRef`` too): a loop through them alone never reaches a smaller value.
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONE = ("not", "if", "then", "else")


def _ref_loop(schema: Mapping[str, Any]) -> bool | int:
    """True when some subschema applies itself to the same value without end, through
    ``$ref``s and in-place keywords only (``{"$ref": "#/$defs/x"}`` in ``x``; ``#`` under
    ``allOf`` of the root). Found only at validation (as RecursionError), it cost the
    caller two upstream calls and came back INVALID_OUTPUT. A ``$ref`` under
    ``properties``, ``items``... descends into the answer, which ends: that recursion is a
    tree's, and allowed. Each ``$ref`` resolves against the base its nearest ``$id``
    gives, as validation resolves it (``#`` under a nested ``$id`` is that subschema).
    Without a loop: the longest chain of subschemas applied in place (each a level of
    validation's recursion, a $ref ~3 frames of Python's stack)."""
    _, nodes = _subschemas(schema)
    # Where each subschema's references resolve: a $ref's target takes the resolver its
    # lookup returns (a target under a data keyword is no subschema of the walk above).
    where = {key: resolver for key, (_, resolver) in nodes.items()}
    # The subschemas carrying each $dynamicAnchor. A $dynamicRef whose static target
    # carries the anchor it names resolves, at validation, to the outermost subschema with
    # that anchor in the dynamic scope, which depends on the path validation took: any of
    # them, here. Followed statically alone, a loop through the dynamic scope passed (the
    # root applying a resource whose "#m" is a leaf statically, the root dynamically).
    dynamic: dict[str, list[dict[str, Any]]] = {}
    for node, _ in nodes.values():
        if isinstance(node.get("$dynamicAnchor"), str):
            dynamic.setdefault(node["$dynamicAnchor"], []).append(node)

    def in_place(node: dict[str, Any]) -> list[Any]:
        resolver = where[id(node)]
        children: list[Any] = [node.get(key) for key in _IN_PLACE_ONE]
        for key in _IN_PLACE_LISTS:
            if isinstance(node.get(key), list):
                children.extend(node[key])
        if isinstance(node.get("dependentSchemas"), dict):
            children.extend(node["dependentSchemas"].values())
        children = [child for child in children if isinstance(child, dict)]
        for child in children:
            if id(child) not in where:
                where[id(child)] = _inside(child, resolver)
        for key in ("$ref", "$dynamicRef"):
            if isinstance(node.get(key), str):
                # A dangling one was refused before this, by _dangling_ref.
                with contextlib.suppress(Unresolvable, ValueError, TypeError, LookupError):
                    resolved = resolver.lookup(node[key])
                    if isinstance(resolved.contents, dict):
                        where.setdefault(id(resolved.contents), resolved.resolver)
                        children.append(resolved.contents)
                        anchor = node[key].partition("#")[2]
                        if (
                            key == "$dynamicRef"
                            and resolved.contents.get("$dynamicAnchor") == anchor
                        ):
                            children.extend(dynamic.get(anchor, ()))
        return children

    # Depth-first over the subschemas (by identity), iterative; a subschema met again
    # while still on the path is a loop.
    # A finished subschema's chain: 1 + its longest child's (all finished before it).
    done: dict[int, int] = {}
    stack: list[tuple[dict[str, Any], list[Any], list[Any]]] = []
    on_path: set[int] = set()
    deepest = 0
    for start, _ in nodes.values():
        if id(start) in done:
            continue
        children = in_place(start)
        stack.append((start, list(children), children))
        on_path.add(id(start))
        while stack:
            node, pending, children = stack[-1]
            if not pending:
                stack.pop()
                on_path.discard(id(node))
                done[id(node)] = 1 + max((done[id(c)] for c in children), default=0)
                deepest = max(deepest, done[id(node)])
                continue
            child = pending.pop()
            if id(child) in on_path:
                return True
            if id(child) not in done:
                grandchildren = in_place(child)
                stack.append((child, list(grandchildren), grandchildren))
                on_path.add(id(child))
    return deepest


def check_schema(schema: Mapping[str, Any], field: str, limits: SchemaLimits) -> OutputSchema:
    """What validates answers against ``schema``, or INVALID_ARGUMENT naming ``field``.

    On the caller's thread: the request path uses ``check_schema_fairly``."""
    canonical = _bounded(schema, field, limits)
    cached = _cached(canonical, limits)
    if cached is not None:
        return cached
    return _remember(canonical, _checked(schema, field, limits), limits)


async def check_schema_fairly(
    schema: Mapping[str, Any], field: str, limits: SchemaLimits, executor: FairExecutor
) -> OutputSchema:
    """``check_schema`` with the costly part of a schema not seen before (the metaschema
    check, ~0.4 ms per subschema: up to ~0.4 s at MAX_SCHEMA_NODES) on ``executor``'s
    thread, tenants in turn: on the event loop it stalled every other caller's call.
    The bounds and the cache lookup stay here (they cost one json.dumps)."""
    canonical = _bounded(schema, field, limits)
    cached = _cached(canonical, limits)
    if cached is not None:
        return cached
    return _remember(canonical, await executor.run(_checked, schema, field, limits), limits)


def _bounded(schema: Mapping[str, Any], field: str, limits: SchemaLimits) -> str:
    """The schema's canonical JSON, once its size, depth and subschemas are within
    ``limits`` (cheap: before any metaschema check)."""
    if not schema:
        raise MissingField("a JSON schema is required", field=field)
    depth = _depth(schema, limits.max_depth)
    if depth > limits.max_depth:
        raise InvalidArgument(
            f"the schema nests deeper than {limits.max_depth} levels",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound("max_depth", limits.max_depth, "MAX_SCHEMA_DEPTH", limits),
        )
    canonical = json.dumps(schema, separators=(",", ":"), sort_keys=True)
    size = len(canonical)
    if size > limits.max_chars:
        raise InvalidArgument(
            f"the schema is {size} characters as JSON; at most {limits.max_chars} are allowed",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound("max_chars", limits.max_chars, "MAX_SCHEMA_CHARS", limits),
        )
    if _more_nodes_than(schema, limits.max_nodes):
        raise InvalidArgument(
            f"the schema has more than {limits.max_nodes} subschemas ({limits.nodes_setting})",
            field=field,
            reason=INVALID_SCHEMA,
            metadata={"max_nodes": str(limits.max_nodes), "setting": limits.nodes_setting},
        )
    return canonical


def _cache_key(canonical: str, limits: SchemaLimits) -> tuple[str, tuple[int, ...]]:
    """A schema accepted under some bounds is not yet accepted under smaller ones (the
    gateway's and the generation service's settings may differ in one process)."""
    bounds = (
        limits.max_class_span,
        limits.max_pattern_size,
        limits.max_patterns_size,
        limits.max_pattern_nesting,
        limits.max_in_place_depth,
    )
    return canonical, bounds


def _cached(canonical: str, limits: SchemaLimits) -> OutputSchema | None:
    key = _cache_key(canonical, limits)
    cached = _accepted.get(key)
    if cached is None:
        return None
    _accepted.move_to_end(key)
    return OutputSchema(cached, limits.pattern_seconds, limits.validate_seconds)


def _remember(
    canonical: str, validator: Draft202012Validator, limits: SchemaLimits
) -> OutputSchema:
    # On the event loop's thread (or the caller's): the cache is never touched from a worker.
    _accepted[_cache_key(canonical, limits)] = validator
    if len(_accepted) > MAX_CACHED:
        _accepted.popitem(last=False)
    return OutputSchema(validator, limits.pattern_seconds, limits.validate_seconds)


def _checked(schema: Mapping[str, Any], field: str, limits: SchemaLimits) -> Draft202012Validator:
    """The validator of a bounded ``schema`` not seen before, or INVALID_ARGUMENT: the
    metaschema check and the rest, the costly part (safe on a worker thread)."""
    # Before the metaschema check, which compiles every pattern (``_compiles``).
    patterns, keywords = _scan(schema)
    _check_class_spans(patterns, field, limits)
    _check_patterns(patterns, field, limits)
    try:
        Draft202012Validator.check_schema(schema, format_checker=_METASCHEMA_FORMATS)
    except SchemaError as err:
        raise InvalidArgument(
            f"not a valid JSON schema: {_short(err.message)}", field=field, reason=INVALID_SCHEMA
        ) from None
    except OverflowError as err:  # a compile of a "pattern" like "a{4294967296}"
        raise InvalidArgument(
            f"not a valid JSON schema: a regular expression {_short(str(err))}",
            field=field,
            reason=INVALID_SCHEMA,
        ) from None
    except RecursionError:  # a compile of groups nested hundreds deep (max_pattern_nesting)
        raise InvalidArgument(
            "not a valid JSON schema: a regular expression's groups nest deeper than "
            f"{limits.max_pattern_nesting} levels",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound(
                "max_nesting", limits.max_pattern_nesting, "MAX_SCHEMA_PATTERN_NESTING", limits
            ),
        ) from None
    if _remote_refs(schema):
        raise InvalidArgument(
            "$ref may only point inside the schema (#/...)", field=field, reason=INVALID_SCHEMA
        )
    try:
        dangling = _dangling_ref(schema)
        loop = dangling is None and _ref_loop(schema)
    except ValueError as err:  # a nested $id that is no URI reference: no base to resolve by
        raise InvalidArgument(
            f"a $id is not a URI reference ({_short(str(err))})",
            field=field,
            reason=INVALID_SCHEMA,
        ) from None
    if dangling is not None:
        raise InvalidArgument(
            f"$ref {_short(repr(dangling))} points to nothing in the schema",
            field=field,
            reason=INVALID_SCHEMA,
        )
    if loop is True:
        raise InvalidArgument(
            "the schema's $refs refer to each other without end (a subschema applies "
            "itself to the same value through $ref, allOf, anyOf, oneOf, not, if/then/else)",
            field=field,
            reason=INVALID_SCHEMA,
        )
    if loop > limits.max_in_place_depth:
        raise InvalidArgument(
            f"the schema's subschemas apply one another in place {loop} deep (through $ref, "
            f"allOf, anyOf, oneOf, not, if/then/else); at most {limits.max_in_place_depth} "
            "deep can be validated",
            field=field,
            reason=INVALID_SCHEMA,
            metadata=_bound(
                "max_depth", limits.max_in_place_depth, "MAX_SCHEMA_IN_PLACE_DEPTH", limits
            ),
        )
    if schema.get("type") != "object":
        raise InvalidArgument(
            'the schema\'s root must be an object schema ("type": "object")',
            field=field,
            reason=INVALID_SCHEMA,
        )
    _check_dialect(schema, field)
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        raise InvalidArgument(
            "unevaluatedProperties cannot be used with patternProperties",
            field=field,
            reason=INVALID_SCHEMA,
        )
    # Without the root's "$schema": a "$ref" to the root would switch validators by it.
    own = {key: value for key, value in schema.items() if key != "$schema"}
    validator: Draft202012Validator = _Validator(own, registry=Registry())
    return validator


async def parse_output_async(
    text: str, schema: OutputSchema, checks: FairExecutor
) -> tuple[dict[str, Any] | None, str]:
    """``parse_output`` on ``checks``' thread, tenants in turn: a large answer or slow
    patterns never hold the event loop, and one tenant's checks never queue another's.
    A caller picks both the schema and (through its prompt) the answer, so each of its
    checks can run to ``validate_seconds``; on ``asyncio.to_thread`` one tenant's
    fan-out filled the default executor's few threads, first come first served, and
    every other tenant's answer waited behind all of its checks."""
    return await checks.run(parse_output, text, schema)


def parse_output(text: str, schema: OutputSchema) -> tuple[dict[str, Any] | None, str]:
    """The model's ``text`` parsed and validated: (the object, "") or (None, why not).

    One wrapping Markdown code fence is tolerated (models add them even when told not to).
    The schema's patterns share ``schema.pattern_seconds``; past it the answer is not
    valid (it could not be shown to match)."""
    body = _unfence(text.strip())
    try:
        value = json.loads(body, parse_int=_json_int)
    except ValueError as err:
        return None, f"the answer is not JSON ({_short(str(err))})"
    except RecursionError:  # json's decoder gives up near Python's recursion limit
        return None, f"the answer nests deeper than {MAX_OUTPUT_DEPTH} levels"
    if _depth(value, MAX_OUTPUT_DEPTH) > MAX_OUTPUT_DEPTH:
        return None, f"the answer nests deeper than {MAX_OUTPUT_DEPTH} levels"
    value = _valid_text(value)
    if not _finite_numbers(value):
        # A Struct holds numbers as doubles: 1e400 or a 400-digit integer cannot travel.
        # Found first: jsonschema divides a number by a float multipleOf, and a 400-digit
        # integer raised OverflowError there.
        return None, "a number is out of the range of a double"
    now = time.monotonic()
    token = _pattern_deadline.set(now + schema.pattern_seconds)
    whole = _validate_deadline.set(now + schema.validate_seconds)
    try:
        schema.validator.validate(value)
    except _PatternFailed as err:
        return None, f"{_short(str(err))} (GENSEARCH_GENERATION_SCHEMA_PATTERN_SECONDS)"
    except _TooSlow:
        return None, (
            f"checking the answer against the schema took longer than "
            f"{seconds_text(schema.validate_seconds)} s ({VALIDATE_SETTING})"
        )
    except ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        return None, f"at {where}: {_short(err.message)}"
    except Unresolvable:  # a "#/..." reference to nothing: the schema's fault, said so
        return None, "the schema has a $ref to nothing"
    except RecursionError:  # "$ref"s that refer to each other without end
        return None, "the schema's $refs refer to each other without end"
    finally:
        _pattern_deadline.reset(token)
        _validate_deadline.reset(whole)
    if not isinstance(value, dict):
        return None, "the answer is not a JSON object"
    return value, ""


def _json_int(digits: str) -> int | float:
    """An answer's integer, or, past the digits Python converts (4300), its float:
    infinite, so the answer is 'a number out of the range of a double' like any other
    such number. ``int`` refused it with Python's own advice (use
    ``sys.set_int_max_str_digits()``), which went to the caller and to the model."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _valid_text(value: Any) -> Any:
    """``value`` with every string (keys too) made valid for protobuf
    (``text.clean_text``): a model's JSON may escape half a surrogate pair (``"\\ud83d"``)
    and ``json.loads`` keeps it, which no Struct can carry (the call failed INTERNAL). The
    answer's depth is already bounded, so recursion is."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _finite_numbers(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            try:
                if not math.isfinite(float(item)):
                    return False
            except OverflowError:
                return False
    return True


def _unfence(text: str) -> str:
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        inner = text[3:-3]
        first, _, rest = inner.partition("\n")
        # ```json\n{...}\n``` : drop the language tag line.
        return rest if first.strip().isalpha() or not first.strip() else inner
    return text


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
