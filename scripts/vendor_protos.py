"""Write the third-party protos a client needs into protos/ (`make gen`, offline).

Clients of gensearch need, besides our own protos, the rich error model
(`google/rpc/status.proto`, `google/rpc/error_details.proto`: the `grpc-status-details-bin`
trailer holds a `google.rpc.Status` whose details are `ErrorInfo`, `BadRequest`,
`RetryInfo`) and the health protocol (`grpc/health/v1/health.proto`). They come from the
Python packages the services already run on, at their locked versions, so nothing is
downloaded:

- googleapis-common-protos ships the google/rpc `.proto` files: copied as they are;
- grpcio-health-checking ships only the compiled descriptor of the health proto: the
  `.proto` is written back from it (no comments; the same messages, fields, numbers,
  options and methods, which tests/common/test_codegen.py checks by compiling it again).

`buf lint` and `buf format` leave these files alone (buf.yaml); only the Python code of our
own protos is generated into gen/ (these packages' own Python modules serve at run time).
"""

from __future__ import annotations

import argparse
import shutil
from importlib import metadata
from pathlib import Path

import google.rpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

ROOT = Path(__file__).resolve().parent.parent
# Our protos/ paths of what we vendor: protos/<VENDORED[i]> (also read by buf.yaml's
# excludes and the drift test).
GOOGLE_RPC = ("google/rpc/status.proto", "google/rpc/error_details.proto")
HEALTH = "grpc/health/v1/health.proto"
VENDORED = (*GOOGLE_RPC, HEALTH)

_Field = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _Field.TYPE_DOUBLE: "double",
    _Field.TYPE_FLOAT: "float",
    _Field.TYPE_INT64: "int64",
    _Field.TYPE_UINT64: "uint64",
    _Field.TYPE_INT32: "int32",
    _Field.TYPE_FIXED64: "fixed64",
    _Field.TYPE_FIXED32: "fixed32",
    _Field.TYPE_BOOL: "bool",
    _Field.TYPE_STRING: "string",
    _Field.TYPE_BYTES: "bytes",
    _Field.TYPE_UINT32: "uint32",
    _Field.TYPE_SFIXED32: "sfixed32",
    _Field.TYPE_SFIXED64: "sfixed64",
    _Field.TYPE_SINT32: "sint32",
    _Field.TYPE_SINT64: "sint64",
}


class _ProtoWriter:
    """Proto3 source for a FileDescriptorProto of plain messages, enums and services (what
    the health proto uses; anything else is refused rather than written wrong)."""

    def __init__(self, fd: descriptor_pb2.FileDescriptorProto) -> None:
        if fd.syntax != "proto3" or fd.dependency or fd.extension:
            raise SystemExit(f"{fd.name}: only self-contained proto3 files are supported")
        self.fd = fd
        self.lines: list[str] = []

    def _type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in _SCALARS:
            return _SCALARS[field.type]
        return field.type_name.removeprefix(f".{self.fd.package}.")

    def _enum(self, enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> None:
        self.lines.append(f"{indent}enum {enum.name} {{")
        for value in enum.value:
            self.lines.append(f"{indent}  {value.name} = {value.number};")
        self.lines.append(f"{indent}}}")

    def _message(self, msg: descriptor_pb2.DescriptorProto, indent: str) -> None:
        if msg.oneof_decl or msg.extension or msg.reserved_range:
            raise SystemExit(f"{msg.name}: oneofs, extensions and reservations not supported")
        entries = {n.name: n for n in msg.nested_type if n.options.map_entry}
        self.lines.append(f"{indent}message {msg.name} {{")
        for enum in msg.enum_type:
            self._enum(enum, indent + "  ")
        for nested in msg.nested_type:
            if nested.name not in entries:
                self._message(nested, indent + "  ")
        if not (msg.field or msg.enum_type or msg.nested_type):
            self.lines[-1] += "}"
            return
        for field in msg.field:
            entry = entries.get(field.type_name.rsplit(".", 1)[-1])
            if entry is not None and field.label == _Field.LABEL_REPEATED:
                key, value = entry.field
                kind = f"map<{self._type(key)}, {self._type(value)}>"
            else:
                repeated = "repeated " if field.label == _Field.LABEL_REPEATED else ""
                kind = repeated + self._type(field)
            self.lines.append(f"{indent}  {kind} {field.name} = {field.number};")
        self.lines.append(f"{indent}}}")

    def render(self, header: str) -> str:
        fd = self.fd
        self.lines = [*(f"// {line}".rstrip() for line in header.splitlines()), ""]
        self.lines += ['syntax = "proto3";', "", f"package {fd.package};", ""]
        options = sorted(fd.options.ListFields(), key=lambda item: item[0].name)
        for option, value in options:
            shown = str(value).lower() if isinstance(value, bool) else f'"{value}"'
            self.lines.append(f"option {option.name} = {shown};")
        for msg in fd.message_type:
            self.lines.append("")
            self._message(msg, "")
        for enum in fd.enum_type:
            self.lines.append("")
            self._enum(enum, "")
        for service in fd.service:
            self.lines += ["", f"service {service.name} {{"]
            for m in service.method:
                arg = ("stream " if m.client_streaming else "") + self._type_name(m.input_type)
                out = ("stream " if m.server_streaming else "") + self._type_name(m.output_type)
                self.lines.append(f"  rpc {m.name}({arg}) returns ({out});")
            self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def _type_name(self, name: str) -> str:
        return name.removeprefix(f".{self.fd.package}.")


def health_proto() -> str:
    fd = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(fd)
    version = metadata.version("grpcio-health-checking")
    header = (
        "Copyright 2015 The gRPC Authors. Licensed under the Apache License, Version 2.0.\n"
        f"Written by scripts/vendor_protos.py from the descriptor in grpcio-health-checking\n"
        f"{version} (grpc_health/v1/health_pb2.py). The canonical source, with comments:\n"
        "https://github.com/grpc/grpc-proto/blob/master/grpc/health/v1/health.proto"
    )
    return _ProtoWriter(fd).render(header)


def vendor(out: Path) -> None:
    """Write every vendored proto under ``out`` (protos/ or a scratch directory)."""
    source = Path(next(iter(google.rpc.__path__)))
    for path in GOOGLE_RPC:
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / Path(path).name, target)
    target = out / HEALTH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(health_proto())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "protos")
    vendor(parser.parse_args().out)


if __name__ == "__main__":
    main()
