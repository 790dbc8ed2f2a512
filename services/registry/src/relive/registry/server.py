"""Wires the registry: storage, service, servicer, and the shared serving plumbing."""

from __future__ import annotations

import grpc

from relive.core.config import Config
from relive.core.mongo import connect, disconnect
from relive.core.serving import Server, build_server, run_service
from relive.registry.service import RegistryService
from relive.registry.servicer import RegistryServicer
from relive.registry.snapshots import CodeSnapshotService
from relive.registry.store import RegistryStore
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


def create_server(config: Config) -> tuple[Server, int]:
    """A registry server bound to ``config.port`` (0: any free port); call ``start()`` on it."""
    connect(config, "registry")
    store = RegistryStore()
    service = RegistryService(store, config.code_path)
    snapshots = CodeSnapshotService(store, config.max_code_snapshot_bytes)
    servicer = RegistryServicer(service, snapshots)

    def register(server: grpc.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    server = build_server(config, register, [SERVICE_NAME])
    server.add_stop_hook(lambda: disconnect("registry"))
    return server, server.port


if __name__ == "__main__":
    run_service("registry", lambda c: create_server(c)[0])
