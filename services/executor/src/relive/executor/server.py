"""Wires the executor: store, the other services, Ray, the servicer, health and reflection."""

from __future__ import annotations

import logging
import os
from typing import Any

from relive.code import CodeSettings
from relive.core.config import Config
from relive.core.mongo import connect, disconnect
from relive.core.serving import Server, build_server, run_service
from relive.errors import FailedPrecondition
from relive.executor.backends import Recorder, Registry
from relive.executor.code import CodeKeeper
from relive.executor.ray_packages import RayPackages
from relive.executor.service import ExecutorService
from relive.executor.servicer import ExecutorServicer
from relive.executor.store import ALIAS, RunStore
from relive.executor.v1 import executor_pb2, executor_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name


def _component_entry(task: Any, names: list[str], *upstream: Any) -> Any:
    from relive.pipeline.task import execute

    return execute(task, {n: r.value for n, r in zip(names, upstream, strict=True)})


def init_ray(config: Config) -> Any:
    """Attaches to ``config.ray_address``, or starts a local Ray once per process. The code
    path is not on the workers' import path: each component gets its run's code snapshot as
    its task's working_dir (``relive.executor.code``), so no worker falls back to live code."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "ignore_reinit_error": True,
            "include_dashboard": False,
            "log_to_driver": False,
        }
        if config.ray_address:
            ray.init(address=config.ray_address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(**kwargs)
    return ray


def remote_function(ray: Any) -> Any:
    return ray.remote(max_retries=0, num_cpus=1)(_component_entry)


def create_server(config: Config) -> tuple[Server, int]:
    if not config.registry_endpoint or not config.recorder_endpoint:
        raise FailedPrecondition(
            "the executor needs RELIVE_REGISTRY_ENDPOINT and RELIVE_RECORDER_ENDPOINT",
            field="RELIVE_REGISTRY_ENDPOINT",
        )
    if config.auth and not config.service_token:
        raise FailedPrecondition(
            "RELIVE_AUTH is on: the executor calls the registry and the recorder with "
            "RELIVE_SERVICE_TOKEN, a token with role: service in the tokens file",
            field="RELIVE_SERVICE_TOKEN",
        )
    connect(config, ALIAS)
    ray = init_ray(config)
    access = config.service_access()
    registry = Registry(config.registry_endpoint, access)
    recorder = Recorder(config.recorder_endpoint, access)
    code_dir = (config.data_dir / "code").resolve()
    code = CodeKeeper(
        registry,
        config.code_path,
        code_dir,
        CodeSettings.from_env(),
        ship=RayPackages(code_dir / "ray").uri,
    )
    service = ExecutorService(
        store=RunStore(),
        registry=registry,
        recorder=recorder,
        ray=ray,
        remote=remote_function(ray),
        code=code,
        access=access,
    )
    recovered = service.recover()
    if recovered:
        log.warning("marked %d unfinished run(s) of an earlier executor FAILED", recovered)
    servicer = ExecutorServicer(service)
    server = build_server(
        config,
        lambda s: executor_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    server.add_stop_hook(registry.close)
    server.add_stop_hook(recorder.close)
    server.add_stop_hook(lambda: disconnect(ALIAS))
    server.add_stop_hook(service.shutdown)
    server.service = service  # type: ignore[attr-defined]
    return server, server.port


if __name__ == "__main__":
    run_service("executor", lambda c: create_server(c)[0])
