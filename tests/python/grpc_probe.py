#!/usr/bin/env python3
"""A black-box gRPC client that has never seen paretopo's .proto files.

Against one running server it:
  1. checks grpc.health.v1.Health for the whole server ("") and prints the status;
  2. lists the services by server reflection (v1alpha, the version grpcio-reflection speaks);
  3. builds the role's GetStatus request and response types from the reflected descriptors,
     calls GetStatus, and prints the reply as JSON;
  4. sends bytes that are not a protobuf message, and an out-of-range WatchStatus interval, and
     prints the status codes and messages the server answers with.

Prints one JSON object on stdout. Usage: grpc_probe.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(address):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    out = {}

    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    out["services"] = services

    pool = descriptor_pool.DescriptorPool(database)
    role_services = [s for s in services if s.startswith("paretopo.v1.")]
    if len(role_services) != 1:
        raise SystemExit(f"expected one paretopo.v1 service, found {role_services}")
    service = pool.FindServiceByName(role_services[0])
    out["service"] = service.full_name
    out["methods"] = sorted(m.name for m in service.methods)

    method = service.methods_by_name["GetStatus"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/GetStatus"
    get_status = channel.unary_unary(
        path,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    status = get_status(request_cls(), timeout=5)
    out["status"] = json_format.MessageToDict(status, preserving_proto_field_name=True)

    raw = channel.unary_unary(path)  # no serializers: sends and receives raw bytes
    try:
        raw(b"\xff\xff\xff\xff", timeout=5)
        out["malformed"] = {"code": "OK"}
    except grpc.RpcError as error:
        out["malformed"] = {"code": error.code().name, "message": error.details()}

    watch = service.methods_by_name["WatchStatus"]
    watch_cls = message_factory.GetMessageClass(watch.input_type)
    watch_status = channel.unary_stream(
        f"/{service.full_name}/WatchStatus",
        request_serializer=watch_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    try:
        next(iter(watch_status(watch_cls(interval_ms=1), timeout=5)))
        out["bad_interval"] = {"code": "OK"}
    except grpc.RpcError as error:
        out["bad_interval"] = {"code": error.code().name, "message": error.details()}

    # The server is still up after the bad requests.
    out["health_after"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
        health.Check(health_pb2.HealthCheckRequest(service=service.full_name), timeout=5).status
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
