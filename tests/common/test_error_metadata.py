"""Counts in a failed call's ErrorInfo metadata, read one way by whoever reads them
(generation's fallback chain, the gateway's results and quota)."""

from __future__ import annotations

import base64

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.errors import (
    ATTEMPTS,
    MAX_IMPORT_DETAIL_BYTES,
    UPSTREAM_CALLS,
    InvalidArgument,
    ResourceExhausted,
    metadata_count,
    note_imported,
    over_limit,
    upstream_calls,
)
from services.common.metadata_size import MetadataLimit
from services.common.quotas import QuotaExceeded


def test_a_count_is_read_only_when_it_is_one() -> None:
    metadata = {ATTEMPTS: "3", UPSTREAM_CALLS: "0", "wait_ms": "-5", "provider": "x"}
    assert metadata_count(metadata, ATTEMPTS) == 3
    assert metadata_count(metadata, UPSTREAM_CALLS) == 0  # there, and zero
    assert metadata_count(metadata, "wait_ms") is None  # not a count
    assert metadata_count(metadata, "provider") is None
    assert metadata_count({}, ATTEMPTS) is None


def test_upstream_calls_are_zero_when_the_error_does_not_say() -> None:
    assert upstream_calls({UPSTREAM_CALLS: "4"}) == 4
    assert upstream_calls({UPSTREAM_CALLS: "four"}) == 0
    assert upstream_calls({}) == 0


def test_a_refusal_past_a_byte_limit_has_one_shape() -> None:
    # The caller-key bound, the metadata limit and the schema size say field, sizes and
    # setting the same way, built in one place (errors.over_limit).
    err = over_limit(
        InvalidArgument, "too long", field="x-key", size=9, limit=8, setting="GENSEARCH_X"
    )
    assert type(err) is InvalidArgument and err.reason == "INVALID_ARGUMENT"
    assert err.message == "x-key: too long"  # the field named even when the message does not
    assert err.metadata == {
        "field": "x-key",
        "limit_bytes": "8",
        "size_bytes": "9",
        "setting": "GENSEARCH_X",
    }
    limit = MetadataLimit(400, "GENSEARCH_X_MAX_METADATA_BYTES")
    try:
        limit.check("/pkg.Svc/Method", [("x-big", "v" * 100)])
    except ResourceExhausted as refused:
        assert refused.reason == "METADATA_TOO_LARGE" and refused.field == "x-big"
        assert set(refused.metadata) == {"field", "limit_bytes", "size_bytes", "setting"}
        assert int(refused.metadata["size_bytes"]) > 400
    else:
        raise AssertionError("metadata over the limit was not refused")


def test_a_failed_imports_rejections_travel_with_their_reasons_within_a_bound() -> None:
    # 400 rejections with long messages: the ImportObjectsResponse detail lists the first
    # that fit MAX_IMPORT_DETAIL_BYTES, in order and with their reasons, says it is cut,
    # and the whole status stays far below gRPC's 8 KiB header limit.
    rejected = [
        ret_pb.ObjectError(index=i * 2, id=f"id-{i}", field="properties.n", message="x" * 900)
        for i in range(400)
    ]
    err = QuotaExceeded("objects_written_per_minute", 10, 1.0)
    note_imported(err, 3, received=800, imported=400, rejected=rejected)
    status = err.to_proto()
    [detail] = [d for d in status.details if d.Is(ret_pb.ImportObjectsResponse.DESCRIPTOR)]
    answer = ret_pb.ImportObjectsResponse()
    detail.Unpack(answer)
    assert (answer.received_count, answer.imported_count) == (800, 400)
    assert 0 < len(answer.errors) < 400 and answer.errors_truncated
    assert [e.index for e in answer.errors] == [i * 2 for i in range(len(answer.errors))]
    assert all(e.field == "properties.n" and e.message.startswith("xxx") for e in answer.errors)
    assert answer.ByteSize() <= MAX_IMPORT_DETAIL_BYTES
    assert len(base64.b64encode(status.SerializeToString())) < 6 * 1024

    # A few short ones all fit, and the detail says none is missing.
    err = QuotaExceeded("objects_written_per_minute", 10, 1.0)
    note_imported(err, 1, received=5, imported=3, rejected=rejected[:2])
    [detail] = [d for d in err.to_proto().details if d.Is(ret_pb.ImportObjectsResponse.DESCRIPTOR)]
    detail.Unpack(answer := ret_pb.ImportObjectsResponse())
    assert [e.id for e in answer.errors] == ["id-0", "id-1"] and not answer.errors_truncated
