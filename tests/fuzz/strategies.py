"""Hypothesis strategies for any protobuf request message, built from its descriptor.

A strategy draws a *filler*: a function that sets fields on an empty message in place.
Values nested past protobuf's parsing limit cannot be copied into a message (a copy
parses), so every message is built where it lives. Strings mix values the running stack
knows (collection and property names, ids) with arbitrary, huge and odd ones, so calls get
past the first checks and into the code behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from hypothesis import strategies as st

Filler = Callable[[pb_message.Message], None]
FD = pb_descriptor.FieldDescriptor

# Message nesting the strategies build (Filter groups, Struct values ...); deeper values
# come from DeepValue, on purpose.
MAX_DEPTH = 4
MAX_REPEATED = 3
_INT_BOUNDS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
ODD_STRINGS = [
    "",
    " ",
    "x" * 20_000,
    "é🙂中文",
    "\x00",
    "{",
    "}}",
    "{{x}}",
    "{title",
    "../../etc/passwd",
    "00000000-0000-0000-0000-000000000000",
    "http://169.254.169.254/latest",
]


def integers(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_BOUNDS[kind]
    edges = [low, high, 0, 1, -1, 10, 100, 1000] if low < 0 else [low, high, 0, 1, 10, 1000]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


def floats(kind: int) -> st.SearchStrategy[float]:
    width = 32 if kind == FD.TYPE_FLOAT else 64
    edges = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 0.5, 2.5, 1e308]
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


@dataclass(frozen=True)
class DeepValue:
    """``levels`` lists (or objects) inside one another: at and past every depth limit."""

    levels: int
    objects: bool

    def fill(self, value: Any) -> None:
        for _ in range(self.levels):
            if self.objects:
                value = value.struct_value.fields["a"]
            else:
                value = value.list_value.values.add()
        value.number_value = 1


def _json(known: Sequence[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        floats(FD.TYPE_DOUBLE),
        st.text(max_size=8),
        st.sampled_from(list(known)),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    )


def _deep() -> st.SearchStrategy[DeepValue]:
    return st.builds(DeepValue, st.integers(28, 60), st.booleans())


def fill_value(data: Any, value: Any) -> None:
    """Sets the ``google.protobuf.Value`` ``value`` from plain Python data."""
    if isinstance(data, DeepValue):
        data.fill(value)
    elif data is None:
        value.null_value = 0
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, float):
        value.number_value = data
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, list):
        value.list_value.SetInParent()
        for item in data:
            fill_value(item, value.list_value.values.add())
    else:
        value.struct_value.SetInParent()
        for key, item in data.items():
            fill_value(item, value.struct_value.fields[key])


def _well_known(name: str, known: Sequence[str]) -> st.SearchStrategy[Filler] | None:
    json = st.one_of(_json(known), _deep())
    if name == "google.protobuf.Value":
        return json.map(lambda data: lambda message: fill_value(data, message))
    if name == "google.protobuf.Struct":
        fields = st.dictionaries(
            st.one_of(st.sampled_from(list(known)), st.text()), json, max_size=4
        )

        def struct(data: dict[str, Any]) -> Filler:
            def fill(message: Any) -> None:
                message.SetInParent()
                for key, item in data.items():
                    fill_value(item, message.fields[key])

            return fill

        return fields.map(struct)
    if name == "google.protobuf.ListValue":

        def listed(data: list[Any]) -> Filler:
            def fill(message: Any) -> None:
                message.SetInParent()
                for item in data:
                    fill_value(item, message.values.add())

            return fill

        return st.lists(json, max_size=4).map(listed)
    if name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):

        def moment(parts: tuple[int, int]) -> Filler:
            def fill(message: Any) -> None:
                message.seconds, message.nanos = parts

            return fill

        return st.tuples(integers(FD.TYPE_INT64), integers(FD.TYPE_INT32)).map(moment)
    return None


class RequestStrategies:
    """One strategy per message type, cached. A string field named in ``hints`` draws
    half of its values from there (the collection that exists, its property names, real
    ids), so requests get past the first lookups; any string may be one of ``known``."""

    def __init__(self, known: Sequence[str], hints: Mapping[str, Sequence[str]]) -> None:
        self.known = list(known)
        self.hints = {name: list(values) for name, values in hints.items()}
        self._cache: dict[tuple[str, int], st.SearchStrategy[Filler]] = {}

    def strings(self, field: str = "") -> st.SearchStrategy[str]:
        anything = st.one_of(
            st.sampled_from(self.known), st.sampled_from(ODD_STRINGS), st.text(max_size=24)
        )
        hinted = self.hints.get(field)
        return st.one_of(st.sampled_from(hinted), anything) if hinted else anything

    def message(self, descriptor: pb_descriptor.Descriptor, depth: int = 0) -> Any:
        key = (descriptor.full_name, depth)
        cached = self._cache.get(key)
        if cached is None:
            cached = _well_known(descriptor.full_name, self.known)
            if cached is None:
                cached = self._fields(descriptor, depth)
            self._cache[key] = cached
        return cached

    def _fields(self, descriptor: pb_descriptor.Descriptor, depth: int) -> Any:
        """Each field present or not; of each oneof (a real one, not a proto3 ``optional``)
        at most one member, chosen evenly."""
        optional: dict[str, Any] = {}
        oneofs: dict[str, list[Any]] = {}
        for field in descriptor.fields:
            if field.type == FD.TYPE_MESSAGE and depth >= MAX_DEPTH:
                continue
            single = self._single(field, depth)
            value = st.lists(single, max_size=MAX_REPEATED) if field.is_repeated else single
            group = field.containing_oneof
            if group is not None and len(group.fields) > 1:
                oneofs.setdefault(group.name, []).append(
                    value.map(lambda v, name=field.name: {name: v})
                )
            else:
                optional[field.name] = value
        parts = [st.fixed_dictionaries({}, optional=optional)]
        parts.extend(st.one_of(st.just({}), *members) for members in oneofs.values())
        return st.tuples(*parts).map(
            lambda dicts: _MessageFiller(descriptor, {k: v for d in dicts for k, v in d.items()})
        )

    def _single(self, field: pb_descriptor.FieldDescriptor, depth: int) -> Any:
        kind = field.type
        if kind == FD.TYPE_MESSAGE:
            return st.deferred(lambda: self.message(field.message_type, depth + 1))
        if kind == FD.TYPE_STRING:
            return self.strings(field.name)
        if kind == FD.TYPE_BYTES:
            return st.binary(max_size=32)
        if kind == FD.TYPE_BOOL:
            return st.booleans()
        if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return floats(kind)
        if kind == FD.TYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values]
            return st.sampled_from([*numbers, max(numbers) + 1, 2**31 - 1])
        return integers(kind)


@dataclass(frozen=True)
class _MessageFiller:
    descriptor: pb_descriptor.Descriptor
    chosen: dict[str, Any]

    def __call__(self, message: Any) -> None:
        for name, value in self.chosen.items():
            field = self.descriptor.fields_by_name[name]
            if field.is_repeated:
                target = getattr(message, name)
                for item in value:
                    if field.type == FD.TYPE_MESSAGE:
                        item(target.add())
                    else:
                        target.append(item)
            elif field.type == FD.TYPE_MESSAGE:
                sub = getattr(message, name)
                sub.SetInParent()
                value(sub)
            else:
                setattr(message, name, value)
