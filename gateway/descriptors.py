"""The descriptor set the gRPC-JSON transcoder reads, built from the generated `_pb2` modules.

Building it from the modules' own `DESCRIPTOR`s (rather than running protoc on `proto/`) means no
compiler is needed at run time and the gateway can never describe a contract the services do not
speak.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor

from callisto.api import MODULES

# The generated modules of every Callisto package (listed by codegen); their imports pull in
# google/api, google/rpc and google/protobuf transitively.
CALLISTO_MODULES: tuple[str, ...] = MODULES

# Not imported by any contract, but `convert_grpc_status` can only render the `details` of a
# google.rpc.Status (BadRequest, RetryInfo, ErrorInfo, ...) as JSON when their types are known.
EXTRA_MODULES: tuple[str, ...] = ("google.rpc.error_details_pb2",)


def _file_descriptors(module_names: Iterable[str]) -> list[FileDescriptor]:
    return [importlib.import_module(name).DESCRIPTOR for name in module_names]


def _with_dependencies(roots: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    """Every file reachable from `roots`, dependencies before dependants (protoc's order)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for root in roots:
        visit(root)
    return ordered


def build_descriptor_set(
    module_names: Sequence[str] = CALLISTO_MODULES + EXTRA_MODULES,
) -> descriptor_pb2.FileDescriptorSet:
    """A self-contained `FileDescriptorSet` for the given generated modules."""
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    for file in _with_dependencies(_file_descriptors(module_names)):
        descriptor_set.file.append(
            descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
        )
    return descriptor_set


def descriptor_set_bytes(module_names: Sequence[str] = CALLISTO_MODULES + EXTRA_MODULES) -> bytes:
    """The serialized descriptor set, ready for the transcoder's `proto_descriptor` file."""
    return build_descriptor_set(module_names).SerializeToString(deterministic=True)


def find_service(full_name: str) -> ServiceDescriptor:
    """The descriptor of a Callisto service, e.g. `callisto.generation.v1.GenerationService`."""
    for file in _file_descriptors(CALLISTO_MODULES):
        for service in file.services_by_name.values():
            if service.full_name == full_name:
                return service
    raise KeyError(f"unknown service {full_name!r}; known: {sorted(all_service_names())}")


def all_service_names() -> list[str]:
    """Every service the Callisto contracts declare."""
    return [
        service.full_name
        for file in _file_descriptors(CALLISTO_MODULES)
        for service in file.services_by_name.values()
    ]


def is_server_streaming(method: MethodDescriptor) -> bool:
    """Whether the server answers with a stream (server-streaming or bidirectional)."""
    return bool(method.server_streaming)


def http_annotated_methods(service: ServiceDescriptor) -> list[MethodDescriptor]:
    """The methods that carry a `google.api.http` annotation (the ones reachable as HTTP/JSON)."""
    from google.api import annotations_pb2

    return [
        method
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    ]
