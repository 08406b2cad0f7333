"""API keys: the variable (historical and extended forms) and the YAML file, validated
strictly, with errors that name the entry and never a key."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from pydantic import SecretStr

from services.common.api_keys import ApiKeyError, load_keys
from services.common.auth import DEFAULT_TENANT, Identity, Role, require_role, set_current_identity
from services.common.errors import PermissionDenied
from services.common.settings import CommonSettings, load_settings
from services.retrieval.__main__ import build_server as build_retrieval
from services.retrieval.settings import RetrievalSettings

SECRET = "s3cr3t-key-value"


def test_the_historical_form_is_a_user_alone_in_its_tenant_as_admin() -> None:
    assert load_keys("alice:k1, bob:k:2", None) == {
        "k1": Identity("alice", "alice", Role.ADMIN),
        "k:2": Identity("bob", "bob", Role.ADMIN),  # the key is all after the first ':'
    }
    # An e-mail address is a user name, not a tenant.
    assert load_keys("ann@example.com:k3", None) == {
        "k3": Identity("ann@example.com", "ann@example.com", Role.ADMIN)
    }


def test_the_extended_form_names_tenant_and_role() -> None:
    assert load_keys(
        "alice@acme/writer:k1,ann@example.com@acme/reader:k2,root@default/admin:k3", None
    ) == {
        "k1": Identity("alice", "acme", Role.WRITER),
        "k2": Identity("ann@example.com", "acme", Role.READER),
        "k3": Identity("root", DEFAULT_TENANT, Role.ADMIN),
    }


def test_a_user_named_default_is_one_owner() -> None:
    """The user "default" of the tenant "default" is in one legacy place, not two: its
    historical key ("default:<key>") and the extended form are one owner. Before, the
    check for one name in both legacy places matched it against itself and refused the
    configuration at start ("in the tenant 'default' and in the tenant 'default'")."""
    for raw in (f"default:{SECRET}", f"default@default/reader:{SECRET}-1,default:{SECRET}-2"):
        identities = set(load_keys(raw, None).values())
        assert {(i.user, i.tenant) for i in identities} == {("default", DEFAULT_TENANT)}


@pytest.mark.parametrize(
    "raw",
    [
        f"alice-{SECRET}",  # no colon
        f":{SECRET}",  # no user
        f"alice/admin:{SECRET}",  # extended form without a tenant
        f"alice@/reader:{SECRET}",  # empty tenant
        f"alice:{SECRET},bob:{SECRET}",  # one key twice
        f"bad\tuser:{SECRET}",  # a control character
        f"carol@default/reader:{SECRET}-1,carol:{SECRET}-2",  # one name in two legacy places
        # A mistyped role: before, an admin named "carol@acme/raeder" in a tenant of its own.
        f"carol@acme/raeder:{SECRET}",
    ],
)
def test_bad_variables_are_refused_without_echoing_the_key(raw: str) -> None:
    with pytest.raises(ApiKeyError) as caught:
        load_keys(raw, None)
    assert SECRET not in str(caught.value)
    assert "GENSEARCH_API_KEYS" in str(caught.value) or "tenant" in str(caught.value)


def test_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - key: {SECRET}-a\n    user: alice\n    tenant: acme\n    role: admin\n"
        f"  - {{key: '{SECRET}-b', user: bob, tenant: acme, role: reader}}\n"
    )
    assert load_keys("", path) == {
        f"{SECRET}-a": Identity("alice", "acme", Role.ADMIN),
        f"{SECRET}-b": Identity("bob", "acme", Role.READER),
    }
    # Beside the variable, through the settings every service reads.
    settings = CommonSettings(api_keys=SecretStr("zed:kz"), api_keys_file=path)
    keys = settings.api_key_map()
    assert keys["kz"] == Identity("zed", "zed", Role.ADMIN) and len(keys) == 3
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (f"- key: {SECRET}\n", "mapping with one field"),
        (f"keys: {SECRET}\n", "must be a list"),
        (f"keys:\n  - key: {SECRET}\n    user: a\n    tenant: t\n", "keys[0]: 'role'"),
        (f"keys:\n  - {{key: {SECRET}, user: a, tenant: t, role: root}}\n", "keys[0]: 'role'"),
        (f"keys:\n  - {{key: {SECRET}, user: a, tenant: t, role: admin, x: 1}}\n", "unknown"),
        (f"keys:\n  - {{key: {SECRET}, user: 7, tenant: t, role: admin}}\n", "keys[0]: 'user'"),
        (
            f"keys:\n  - {{key: {SECRET}, user: a, tenant: t, role: admin}}\n"
            f"  - {{key: {SECRET}, user: b, tenant: t, role: reader}}\n",
            "keys[1]",
        ),
        (f"keys:\n  - {{key: '{SECRET}', user: a\n", "not valid YAML"),
        (f"keys:\n  - {{key: ' {SECRET}', user: a, tenant: t, role: admin}}\n", "'key'"),
    ],
)
def test_bad_files_are_refused_without_echoing_a_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ApiKeyError) as caught:
        load_keys("", path)
    assert names in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_key_in_both_the_variable_and_the_file_names_both_entries(tmp_path: Path) -> None:
    # The README: "a key may appear once in all", and a bad entry stops the service
    # "with a message naming the entry". Before, a key of the file that the variable also
    # gave was refused as "GENSEARCH_API_KEYS_FILE: this key is already given to another
    # entry", naming neither the file's entry nor the variable's: with many keys, the
    # operator could not tell which two lines clash.
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{key: '{SECRET}-a', user: alice, tenant: acme, role: admin}}\n"
        f"  - {{key: '{SECRET}-b', user: bob, tenant: acme, role: reader}}\n"
    )
    with pytest.raises(ApiKeyError) as caught:
        load_keys(f"zed:{SECRET}-z, carol:{SECRET}-b", path)
    message = str(caught.value)
    assert "GENSEARCH_API_KEYS_FILE keys[1]" in message
    assert "GENSEARCH_API_KEYS entry 1" in message
    assert SECRET not in message


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="cannot be read"):
        CommonSettings(api_keys_file=tmp_path / "absent.yaml").api_key_map()


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.includes(Role.WRITER) and Role.ADMIN.includes(Role.READER)
    assert Role.WRITER.includes(Role.READER) and not Role.WRITER.includes(Role.ADMIN)
    assert not Role.READER.includes(Role.WRITER)

    def as_writer() -> None:
        set_current_identity(Identity("w", "t", Role.WRITER))
        assert require_role(Role.READER).user == "w"
        require_role(Role.ADMIN)

    with pytest.raises(PermissionDenied) as caught:
        contextvars.copy_context().run(as_writer)  # the identity stays in that context
    assert caught.value.reason == "ROLE_REQUIRED"
    assert caught.value.metadata == {"required_role": "admin", "role": "writer"}
    assert "'admin'" in caught.value.message


async def test_the_keys_checked_at_start_are_the_keys_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_settings parses the keys file to check it; the server used to read it again,
    so a file rotated or removed in between started the service with keys nobody had
    checked, or stopped it with a traceback instead of one line."""
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{key: {SECRET}-a, user: alice, tenant: acme, role: admin}}\n")
    monkeypatch.delenv("GENSEARCH_API_KEYS", raising=False)
    monkeypatch.setenv("GENSEARCH_API_KEYS_FILE", str(path))
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings(RetrievalSettings)
    path.write_text(f"keys:\n  - {{key: {SECRET}-b, user: bob\n")  # now malformed
    server = await build_retrieval(settings, port=0)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = ret_grpc.RetrievalServiceStub(channel)
            listed = await stub.ListCollections(
                ret_pb.ListCollectionsRequest(),
                metadata=(("authorization", f"Bearer {SECRET}-a"),),
                timeout=10,
            )
            assert list(listed.collections) == []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListCollections(
                    ret_pb.ListCollectionsRequest(),
                    metadata=(("authorization", f"Bearer {SECRET}-b"),),
                    timeout=10,
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
