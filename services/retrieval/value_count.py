"""Counting the values of objects before they are checked, so one writer's batch of many
small values cannot hold the event loop every tenant's calls share.

Checking an object's properties (``schema.prepare_object``: the NaN and depth walk, the
JSON read, the coercion to each property's type) costs about 2 us a value, on the loop.
1,000 objects of 2,000 tags each fit the request byte bound, and checking them held every
other call of the replica for seconds (another tenant's ListCollections waited 8.8 s).
Moving that work to a thread gave erratic relief under the GIL; a bound on the count holds.

What counts: every ``google.protobuf.Value`` inside an object's ``properties``. A
property's value is one, and so is each element of a list and each field of a nested
struct, at any depth (``{"tags": ["a", "b"], "meta": {"x": 1}}`` is 5: tags, its two
elements, meta, and meta.x). A null counts as one. The vector does not count (its length
is checked against the collection's dimensions, in numpy).

The count is cheap and stops early: a container adds its length at once, before any of
its elements is looked at, and the count ends as soon as it is past its bound, so refusing
a batch costs at most a look at each value up to the bound, never the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import struct_pb2

PER_OBJECT_SETTING = "GENSEARCH_RETRIEVAL_MAX_VALUES_PER_OBJECT"
PER_BATCH_SETTING = "GENSEARCH_RETRIEVAL_MAX_VALUES_PER_BATCH"


def count_values(properties: struct_pb2.Struct, stop_past: int) -> int:
    """The values inside ``properties`` (module docstring), or, once the count is past
    ``stop_past``, some number past it (the rest unread)."""
    count = 0
    pending: list[struct_pb2.Struct | struct_pb2.ListValue] = [properties]
    while pending:
        node = pending.pop()
        children = node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values
        count += len(children)
        if count > stop_past:
            return count
        for child in children:
            kind = child.WhichOneof("kind")
            if kind == "struct_value":
                pending.append(child.struct_value)
            elif kind == "list_value":
                pending.append(child.list_value)
    return count


class BatchTooManyValues(Exception):
    """The batch holds more than its bound of values: ``counted`` as far as read."""

    def __init__(self, counted: int) -> None:
        super().__init__(counted)
        self.counted = counted


def count_batch(
    objects: Sequence[pb.DataObject], per_object: int, per_batch: int
) -> dict[int, int]:
    """Counts ``objects``' values against both bounds; raises BatchTooManyValues once the
    batch is past ``per_batch``. Returns the positions (in ``objects``) of the objects past
    ``per_object``, each with its count as far as it was read. Such an object counts toward
    the batch as ``per_object + 1`` (its count ends there: it is refused on its own, the
    rest of its values never read)."""
    too_many: dict[int, int] = {}
    total = 0
    for i, obj in enumerate(objects):
        if not obj.HasField("properties"):
            continue
        left = per_batch - total
        counted = count_values(obj.properties, min(per_object, left))
        if counted > per_object:
            too_many[i] = counted
            counted = per_object + 1
        total += counted
        if total > per_batch:
            raise BatchTooManyValues(total)
    return too_many
