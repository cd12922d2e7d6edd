#!/usr/bin/env python3
"""Checks flatnetd's gRPC server reflection with an independent client (grpcio + grpcio-reflection),
the way grpcurl uses it: list the services, fetch the file that defines flatnet.v1.Inspect, build
message classes from that descriptor alone (no generated code), and call methods with them.

usage: reflection_check.py SOCKET [METHOD ...]

SOCKET is flatnetd's Unix socket. Each METHOD (default: Status ListAllocations ListNetworks) is a
method of flatnet.v1.Inspect called with an empty request. Prints one JSON object on stdout:

  {"v1alpha_services": [...], "v1_services": [...], "inspect_methods": [...],
   "calls": {"Status": {...}, "ListAllocations": {...}}}

Exit status 2 when grpcio or grpcio-reflection is missing (the caller decides whether that is a
failure), 1 on any other error.
"""

import json
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"reflection_check.py: missing Python module: {e.name} "
          "(python3 -m pip install grpcio grpcio-reflection)", file=sys.stderr)
    sys.exit(2)

INSPECT = "flatnet.v1.Inspect"
# grpc.reflection.v1 has the same messages as v1alpha under another package, so the v1alpha
# message classes can speak to the v1 service as well (grpcio-reflection ships only v1alpha).
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
TIMEOUT = 10


def reflect(channel, request, method=None):
    """Sends one reflection request and returns the one response."""
    if method is None:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    else:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        responses = call(iter([request]), timeout=TIMEOUT)
    response = next(iter(responses))
    if response.HasField("error_response"):
        raise RuntimeError(f"reflection error {response.error_response.error_code}: "
                           f"{response.error_response.error_message}")
    return response


def services(channel, method=None):
    response = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""), method)
    return sorted(s.name for s in response.list_services_response.service)


def file_descriptors(channel, symbol):
    """Every FileDescriptorProto the server sends for `symbol`, dependencies included."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = reflect(channel, request)
    protos = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        protos.append(proto)
    return protos


def message_class(descriptor):
    # protobuf >= 4.22 has GetMessageClass; older releases only the factory object.
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory().GetPrototype(descriptor)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 1
    socket = sys.argv[1]
    methods = sys.argv[2:] or ["Status", "ListAllocations", "ListNetworks"]
    # The HTTP/2 authority must be a host name; grpcurl sends the same with -authority localhost.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix:{socket}", options=options) as channel:
        out = {"v1alpha_services": services(channel), "v1_services": services(channel, V1_METHOD)}

        pool = descriptor_pool.DescriptorPool()
        pending = file_descriptors(channel, INSPECT)
        # Add files after their dependencies (flatnet.proto has none, but be general).
        added = set()
        while pending:
            progress = False
            for proto in list(pending):
                if all(dep in added for dep in proto.dependency):
                    pool.Add(proto)
                    added.add(proto.name)
                    pending.remove(proto)
                    progress = True
            if not progress:
                raise RuntimeError(f"unresolved dependencies in {[p.name for p in pending]}")
        service = pool.FindServiceByName(INSPECT)
        out["inspect_methods"] = sorted(m.name for m in service.methods)

        out["calls"] = {}
        for name in methods:
            method = service.FindMethodByName(name)
            if method is None:
                raise RuntimeError(f"{INSPECT} has no method {name}")
            request_class = message_class(method.input_type)
            response_class = message_class(method.output_type)
            call = channel.unary_unary(
                f"/{INSPECT}/{name}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            reply = call(request_class(), timeout=TIMEOUT)
            out["calls"][name] = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"reflection_check.py: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - report anything as one line and a failing status
        print(f"reflection_check.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
