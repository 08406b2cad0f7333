"""One rule for an ``update_mask`` path an Update* RPC refuses, in every one of them.

- ``FIELD_NOT_UPDATABLE``: the path names a real field of the resource (``input`` of an
  interaction, ``create_time`` of a conversation, ``summary.text``) that this RPC never
  changes. The request is well formed; the field is read-only or immutable.
- ``INVALID_UPDATE_MASK``: the path names nothing this RPC can address: a field the
  resource does not have (``inputs``, ``*``), or a form of path it does not support
  (``additional_info.a.b``, a key nested inside a key).

UpdateConversation answered INVALID_UPDATE_MASK for both and UpdateInteraction
FIELD_NOT_UPDATABLE for both, so a client could not tell a typo from a read-only field."""

from __future__ import annotations

from google.protobuf.message import Message

from services.common.errors import InvalidArgument

MASK_FIELD = "update_mask"


def refuse_path(path: str, resource: type[Message], updatable: str) -> InvalidArgument:
    """The error for ``path``, which the RPC does not update. ``resource`` is the message
    the mask's paths name (Conversation, Interaction); ``updatable`` says which paths can
    be updated, for the message."""
    shown = repr(path[:100])
    top = path.split(".", 1)[0]
    if top in resource.DESCRIPTOR.fields_by_name:
        return InvalidArgument(
            f"update_mask path {shown} names a field that cannot be updated ({updatable} can)",
            field=MASK_FIELD,
            reason="FIELD_NOT_UPDATABLE",
            metadata={"path": path[:100]},
        )
    return InvalidArgument(
        f"update_mask path {shown} names no field of {resource.DESCRIPTOR.name} ({updatable} can)",
        field=MASK_FIELD,
        reason="INVALID_UPDATE_MASK",
        metadata={"path": path[:100]},
    )


def unsupported_path(path: str, why: str) -> InvalidArgument:
    """A path into an updatable field, in a form the RPC does not support."""
    return InvalidArgument(
        f"update_mask path {path[:100]!r} {why}",
        field=MASK_FIELD,
        reason="INVALID_UPDATE_MASK",
        metadata={"path": path[:100]},
    )
