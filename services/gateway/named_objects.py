"""Generation over objects the caller names (GenerateOnObjects): the ``generate`` block of a
generative search, with no search.

The objects come by id from a collection (read through retrieval, with the caller's
identity, so tenancy is retrieval's as for any read) or inline as properties. Then the plan
is the generative search's own (``GenerativeSearch.build``): same templates, fan-out,
grouped prompt, cache, unary and streamed answers.

Decisions: the ids are read with one ``BatchGetObjects`` call. A well-formed id that the
collection does not hold (never written, deleted, or another tenant's: retrieval lists them
all alike in ``missing_ids``, and cannot tell them apart, nor can we) is that object's own
NOT_FOUND error, like any per-hit failure, and stays out of the grouped prompt; the call
answers for the rest. A malformed id, an id given twice (each repeat would be its own LLM
call for the same object), an unknown or foreign collection, too many objects or an
oversized inline object fail the whole call with INVALID_ARGUMENT / NOT_FOUND naming the
field, before any LLM call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from services.common.errors import InvalidArgument, MissingField, NotFound, out_of_range
from services.common.property_types import ObjectInvalid, coerce_value
from services.common.repeats import refuse_repeats
from services.common.suggest import did_you_mean
from services.common.values import TooManyValues, ValueTally, check_uuid, check_value
from services.gateway import generative_request, templates
from services.gateway.backends import Backends
from services.gateway.catalog import CollectionInfo
from services.gateway.clients import Caller
from services.gateway.deadline import time_left
from services.gateway.errors import HitError
from services.gateway.generative import (
    GenerativeSearch,
    Plan,
    check_templates,
    parse_single,
    respond,
    stream_events,
)
from services.gateway.hit_properties import HitProperties

ObjectsLike = gw_pb.GenerateOnObjectsRequest | gw_pb.StreamGenerateOnObjectsRequest
INLINE_VALUES_SETTING = "GENSEARCH_GATEWAY_MAX_INLINE_VALUES"


class NamedObjects:
    def __init__(self, backends: Backends, search: GenerativeSearch) -> None:
        self._b = backends
        self._search = search

    async def run(
        self, request: gw_pb.GenerateOnObjectsRequest, caller: Caller, call_remaining: float | None
    ) -> gw_pb.GenerateOnObjectsResponse:
        plan = await self.plan(request, caller, call_remaining)
        return await respond(plan, gw_pb.GenerateOnObjectsResponse())

    async def stream(
        self,
        request: gw_pb.StreamGenerateOnObjectsRequest,
        caller: Caller,
        call_remaining: float | None,
    ) -> AsyncIterator[gw_pb.StreamGenerateOnObjectsResponse]:
        plan = await self.plan(request, caller, call_remaining)
        async for event in stream_events(plan, gw_pb.StreamGenerateOnObjectsResponse):
            yield event

    async def plan(
        self, request: ObjectsLike, caller: Caller, call_remaining: float | None
    ) -> Plan:
        s = self._b.settings
        loop = asyncio.get_running_loop()
        call_deadline = None if call_remaining is None else loop.time() + call_remaining
        g = request.generate
        generative_request.validate_generate(g, s)
        generative_request.require_task(g)
        refuse_repeats(request.return_properties, "return_properties")
        await generative_request.check_response_format(g, s, self._b.schema_checks)
        single = parse_single(g)  # once: checked below, rendered per object by the plan
        kind = request.WhichOneof("objects")
        if kind == "ids":
            count, what = len(request.ids.ids), "ids.ids"
        elif kind == "inline":
            count, what = len(request.inline.objects), "inline.objects"
        else:
            raise MissingField("give ids or inline objects", field="ids")
        if not 1 <= count <= s.max_hits:
            raise out_of_range(
                f"{what} must hold between 1 and {s.max_hits} entries",
                field=what,
                bound=s.max_hits,
                setting="GENSEARCH_GATEWAY_MAX_HITS",
            )
        if kind == "ids":
            ids = [check_uuid(v, f"ids.ids[{i}]") for i, v in enumerate(request.ids.ids)]
            # One object twice would be two hits and two LLM calls; ids are canonical, so
            # one repeated in upper case is caught too.
            refuse_repeats(ids, "ids.ids", what="id", reason="DUPLICATE_ID")
            generative_request.require(request, "collection")
        else:
            self._check_inline_objects(request.inline.objects)

        # The read of the collection and its objects ends within an hour, whatever the
        # caller's deadline (or none), as a GenerativeSearch's search phase does.
        read_deadline = generative_request.search_phase_deadline(call_remaining)
        info: CollectionInfo | None = None
        if request.collection:
            info = await self._b.catalog.get(request.collection, caller, time_left(read_deadline))
            check_templates(g, single, info)
            templates.check_known(
                request.return_properties, info.properties, field="return_properties"
            )
        failed: dict[int, HitError] = {}
        # Inline objects' values as the prompts read them, converted at most once: the
        # type check below and the templates share them.
        read: list[HitProperties] | None = None
        if kind == "ids":
            assert info is not None
            hits = await self._fetch(
                request.collection, ids, caller, time_left(read_deadline), failed
            )
        else:
            hits = [ret_pb.Hit(properties=obj) for obj in request.inline.objects]
            read = [HitProperties(obj) for obj in request.inline.objects]
            if info is None:
                # No schema: the objects' own property names are what templates may name.
                names = {name for obj in request.inline.objects for name in obj.fields}
                # The message lists them as such: there is no collection to blame.
                owner = "the objects have"
                if single is not None:
                    templates.check_single_prompt(
                        single, names, field="generate.single_prompt", owner=owner
                    )
                templates.check_known(
                    g.grouped_properties, names, field="generate.grouped_properties", owner=owner
                )
                templates.check_known(
                    request.return_properties, names, field="return_properties", owner=owner
                )
            else:
                for i, obj in enumerate(request.inline.objects):
                    for name in obj.fields:
                        if name not in info.properties:
                            # The field (the property's path) starts the message, written
                            # out: a property named "no" would otherwise be read as the
                            # message's subject ("inline.objects[0].no property 'no' …").
                            path = f"inline.objects[{i}].{name[:64]}"
                            hint, suggestion = did_you_mean(name, info.properties)
                            raise InvalidArgument(
                                f"{path}: no property {name[:64]!r} in collection "
                                f"{info.collection.name!r}{hint}",
                                field=path,
                                reason="UNKNOWN_PROPERTY",
                                metadata=suggestion,
                            )
                        # A null is no value, as UpsertObjects stores it; so is a Value with
                        # no kind set, which UpsertObjects reads as null and skips too (it
                        # was refused here as "got an object").
                        if obj.fields[name].WhichOneof("kind") in ("null_value", None):
                            continue
                        path = f"inline.objects[{i}].{name[:64]}"
                        _check_type(info.properties[name], read[i][name], path)
        return await self._search.build(
            hits=hits,
            info=info,
            generate=g,
            single=single,
            return_properties=list(request.return_properties),
            streaming=isinstance(request, gw_pb.StreamGenerateOnObjectsRequest),
            call_deadline=call_deadline,
            caller=caller,
            failed=failed,
            properties=read,
        )

    def _check_inline_objects(self, objects: Any) -> None:
        """Each inline object's size and values, and the values of all of them together
        against MAX_INLINE_VALUES, counted by the same walk: a request past it is refused
        whole, as retrieval refuses a write batch past MAX_VALUES_PER_BATCH (same reason
        and metadata), the rest of its values unread. The 4 MiB a request may hold let in
        ~2 M values, whose check alone held the event loop 0.3-0.6 s."""
        limit = self._b.settings.max_inline_values
        tally = ValueTally(limit)
        try:
            for i, obj in enumerate(objects):
                self._check_inline(obj, f"inline.objects[{i}]", tally)
        except TooManyValues:
            raise InvalidArgument(
                f"inline.objects hold more than {limit} property values ({INLINE_VALUES_SETTING}"
                ": each property's value, list element and nested field counts one); split "
                "them into smaller requests",
                field="inline.objects",
                reason="BATCH_TOO_LARGE",
                metadata={"max": str(limit), "setting": INLINE_VALUES_SETTING},
            ) from None

    def _check_inline(self, obj: struct_pb2.Struct, field: str, tally: ValueTally) -> None:
        limit = self._b.settings.max_inline_object_bytes
        if obj.ByteSize() > limit:
            raise InvalidArgument(
                f"{field} is larger than {limit} bytes",
                field=field,
                reason="TOO_LARGE",
                metadata={"max_bytes": str(limit)},
            )
        check_value(obj, field, self._b.settings.max_value_depth, tally=tally)

    async def _fetch(
        self,
        collection: str,
        ids: list[str],
        caller: Caller,
        timeout: float | None,
        failed: dict[int, HitError],
    ) -> list[ret_pb.Hit]:
        """The objects, in the order given (each id once: repeats were refused), read in
        one call; an id the collection does not hold is a hit with that id, no properties
        and its own NOT_FOUND in ``failed``. ``ids`` are canonical, as retrieval answers
        them."""
        request = ret_pb.BatchGetObjectsRequest(collection=collection, ids=ids)
        try:
            response = await self._b.clients.retrieval.batch_get_objects(request, caller, timeout)
        except NotFound:
            # The collection was there a moment ago (the catalog read it): dropped since.
            raise NotFound(f"collection {collection!r} not found", field="collection") from None
        found = {obj.id: obj for obj in response.objects}
        hits: list[ret_pb.Hit] = []
        for index, object_id in enumerate(ids):
            got = found.get(object_id)
            if got is None:
                failed[index] = HitError(
                    grpc.StatusCode.NOT_FOUND,
                    f"object {object_id} not found in {collection!r}",
                    "OBJECT_NOT_FOUND",
                    {"field": f"ids.ids[{index}]", "id": object_id},
                )
                hits.append(ret_pb.Hit(id=object_id))
                continue
            hits.append(ret_pb.Hit(id=got.id, properties=got.properties))
        return hits


def _check_type(data_type: int, value: Any, path: str) -> None:
    """WRONG_TYPE naming ``path`` for a value (converted from its Struct: ``HitProperties``,
    not null) the collection would not store in a property of ``data_type``
    (UpsertObjects' own rule: ``property_types.coerce_value``): a text property given the
    number 5 was taken and rendered "5.0" into the prompt. An int past 2^53 is refused
    too: the Struct's double may not be the integer the client meant. The value's depth
    and size were checked before (``_check_inline``)."""
    try:
        coerce_value(data_type, value, path)
    except ObjectInvalid as err:
        # The message starts with the field (as the unknown property's does), once; the
        # field is the element of a text array that is not text (``tags[1]``), if one is.
        field = err.field
        message = err.message if err.message.startswith(field) else f"{field}: {err.message}"
        raise InvalidArgument(message, field=field, reason="WRONG_TYPE") from None
