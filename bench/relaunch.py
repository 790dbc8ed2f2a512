"""Relaunch cost: a 10-pipeline ION relaunched through the executor on Ray, against the same
components run directly in one process with nothing recorded.

Prints one JSON object: ``relaunch_s``, ``direct_s``, ``ratio`` (target: <= 1.5) and
``startup_s`` (the fixed cost of starting the store, the services and Ray, paid once), plus
Ray's overhead per component. ``code_snapshot`` says what recording the code costs a launch
(inspecting the code tree, storing its snapshot, materializing it and shipping it to Ray):
the first time, and once the snapshot is stored, also as a share of ``relaunch_s`` (target:
<= 5%). ``--quick`` runs a smaller ION (under 60 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.patterns.generate import random_ion, random_ion_yaml  # noqa: E402
from relive.client.executor import ExecutorClient  # noqa: E402
from relive.client.registry import RegistryClient  # noqa: E402
from relive.core.config import Config  # noqa: E402
from relive.core.embedded import EmbeddedStore  # noqa: E402
from relive.executor.v1 import executor_pb2 as pb  # noqa: E402


class _Ref:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class DirectRay:
    """Stands in for Ray: runs each component at once, in this process."""

    class exceptions:
        class RayTaskError(Exception):
            def __init__(self, cause: BaseException) -> None:
                super().__init__(str(cause))
                self.cause = cause

        class TaskCancelledError(Exception):
            pass

        class WorkerCrashedError(Exception):
            pass

    def __init__(self, sink: Any, store: Any) -> None:
        self.sink, self.store = sink, store
        self.components = 0

    def options(self, **_: Any) -> DirectRay:
        return self

    def remote(self, task: Any, names: list[str], *upstream: _Ref) -> _Ref:
        from relive.pipeline.task import execute

        self.components += 1
        try:
            values = {n: r.value.value for n, r in zip(names, upstream, strict=True)}
            return _Ref(execute(task, values, self.sink, self.store))
        except Exception as e:
            return _Ref(error=self.exceptions.RayTaskError(e))

    def wait(self, refs: list[_Ref], timeout: float = 0) -> tuple[list[_Ref], list[_Ref]]:
        return refs, []

    def get(self, ref: _Ref) -> Any:
        if ref.error:
            raise ref.error
        return ref.value

    def cancel(self, ref: _Ref, force: bool = False) -> None:
        return None


def run_direct(definition_run: pb.Run) -> tuple[float, int]:
    """The same ION, spec and components, in this process: no Ray, no recorder, no registry."""
    from relive.executor.execution import RunEnv
    from relive.executor.relaunch import RelaunchPlan
    from relive.executor.runner import RunExecution
    from relive.pipeline.events import ListSink
    from relive.pipeline.models import MemoryModelStore

    sink, store = ListSink(), MemoryModelStore()
    fake = DirectRay(sink, store)
    run = pb.Run()
    run.CopyFrom(definition_run)
    run.ClearField("nodes")
    run.is_terminal = False
    for node in sorted(run.spec.definition.nodes):
        run.nodes.add(node=node, state=pb.RUN_STATE_PENDING)
    env = RunEnv(recorder="", registry="", sink=sink, store=store, remote=fake, ray=fake)
    ex = RunExecution(run, env, RelaunchPlan(), lambda r: None)
    t0 = time.perf_counter()
    ex._main()
    elapsed = time.perf_counter() - t0
    if ex.run.state != pb.RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"direct run failed: {ex.run.error_message}")
    return elapsed, fake.components


def ray_task_overhead_ms(ray: Any, n: int = 200) -> float:
    @ray.remote(num_cpus=1)
    def noop() -> None:
        return None

    ray.get(noop.remote())
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(noop.remote())
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def code_snapshot_s(service: Any, definition: Any) -> tuple[float, Any]:
    """What recording and shipping the code costs one launch (the steps of
    ``ExecutorService.launch`` and ``_start``: inspect the code roots, store a new snapshot,
    materialize it, ship it to Ray), and what it recorded."""
    from relive.core.identity import DEFAULT_PROJECT

    t0 = time.perf_counter()
    recorded = service.code.record(definition, DEFAULT_PROJECT)
    service.code.prepare(recorded.refs, definition, DEFAULT_PROJECT)
    return time.perf_counter() - t0, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 60 s")
    parser.add_argument("--pipelines", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--dataset", default="digits", help="scikit-learn data set")
    parser.add_argument("--trees", type=int, default=50, help="trees per random forest")
    parser.add_argument("--debug", action="store_true", help="print the relaunch's timeline")
    args = parser.parse_args()
    pipelines = args.pipelines or (4 if args.quick else 10)
    repeat = args.repeat or (1 if args.quick else 3)
    seed = 7

    from relive.executor.server import create_server as executor_server
    from relive.recorder.server import create_server as recorder_server
    from relive.registry.server import create_server as registry_server

    tmp = Path(tempfile.mkdtemp(prefix="relive-bench-"))
    t0 = time.perf_counter()
    store = EmbeddedStore(tmp / "store")
    uri = store.start()
    config = Config(
        data_dir=tmp / "data",
        mongodb_uri=uri,
        db_prefix=f"b{uuid.uuid4().hex[:8]}",
        code_path=(str(ROOT),),
        grace_s=0.5,
    )
    servers = []
    try:
        reg, reg_port = registry_server(config)
        reg.start()
        config = config.with_(registry_endpoint=f"127.0.0.1:{reg_port}")
        rec, rec_port = recorder_server(config)
        rec.start()
        config = config.with_(recorder_endpoint=f"127.0.0.1:{rec_port}")
        exe, exe_port = executor_server(config)
        exe.start()
        servers = [exe, rec, reg]
        startup_s = time.perf_counter() - t0

        import ray

        overhead_ms = ray_task_overhead_ms(ray, 50 if args.quick else 200)
        ion_file = tmp / "bench.yaml"
        workload = {
            "dataset": args.dataset,
            "models": ("forest", "logreg"),
            "trees": 10 if args.quick else args.trees,
        }
        ion_file.write_text(random_ion_yaml(seed, "bench", pipelines, **workload))
        definition = random_ion(seed, "bench", pipelines, **workload)
        n_components = sum(
            len(n["pipeline"]["components"])
            for n in definition["nodes"].values()
            if "pipeline" in n
        )
        with (
            grpc.insecure_channel(f"127.0.0.1:{reg_port}") as rc,
            grpc.insecure_channel(f"127.0.0.1:{exe_port}") as ec,
        ):
            registration = RegistryClient(rc).register(ion_file)
            ion = registration.ion.name
            service = exe.service  # type: ignore[attr-defined]
            # The first time: a registry without the snapshot, an executor that never saw it.
            first_s, first = code_snapshot_s(service, registration.revision.definition)
            client = ExecutorClient(ec)
            t1 = time.perf_counter()
            original = client.wait(client.launch(ion, seed=seed).name, timeout=600)
            first_launch_s = time.perf_counter() - t1
            if original.state != pb.RUN_STATE_SUCCEEDED:
                raise RuntimeError(f"the launch failed: {original.error_message}")
            relaunches, rpcs = [], []
            for _ in range(repeat):
                t1 = time.perf_counter()
                started = client.relaunch(run=original.name)
                rpcs.append(time.perf_counter() - t1)
                again = client.wait(started.name, timeout=600)
                relaunches.append(time.perf_counter() - t1)
                if again.state != pb.RUN_STATE_SUCCEEDED:
                    raise RuntimeError(f"the relaunch failed: {again.error_message}")
            verification = client.verify(original.name, again.name)
            if args.debug:
                from relive.client.recorder import RecorderClient

                with RecorderClient(f"127.0.0.1:{rec_port}") as recorder:
                    events = list(recorder.list_events(ion, runs=[again.name]))
                t_start = min(e.hlc.physical_ms for e in events)
                for e in events:
                    if e.kind != 2:
                        print(
                            f"{e.hlc.physical_ms - t_start:6d} {e.type:20} {e.node}.{e.component}",
                            file=sys.stderr,
                        )
        directs = []
        executed = 0
        for _ in range(repeat):
            d, executed = run_direct(original)
            directs.append(d)
        relaunch_s = statistics.median(relaunches)
        direct_s = statistics.median(directs)
        stored = [code_snapshot_s(service, registration.revision.definition) for _ in range(5)]
        stored_s = statistics.median(t for t, _ in stored)
        snapshot = {
            "first_s": round(first_s, 3),
            "stored_s": round(stored_s, 4),
            "stored_share_of_relaunch": round(stored_s / relaunch_s, 4),
            "roots": first.roots,
            "snapshots_stored_first_time": first.stored,
            "snapshots_stored_later": max(r.stored for _, r in stored),
        }
        print(
            json.dumps(
                {
                    "pipelines": pipelines,
                    "workload": {**workload, "models": list(workload["models"])},
                    "components": n_components,
                    "component_runs": executed,
                    "relaunch_s": round(relaunch_s, 3),
                    "direct_s": round(direct_s, 3),
                    "ratio": round(relaunch_s / direct_s, 2) if direct_s else None,
                    "startup_s": round(startup_s, 3),
                    "relaunch_rpc_s": round(statistics.median(rpcs), 3),
                    "first_launch_s": round(first_launch_s, 3),
                    "ray_task_roundtrip_ms": round(overhead_ms, 2),
                    "overhead_per_component_ms": round(
                        (relaunch_s - direct_s) / max(1, executed) * 1000, 1
                    ),
                    "verification": pb.VerificationStatus.Name(verification.status).removeprefix(
                        "VERIFICATION_STATUS_"
                    ),
                    "code_snapshot": snapshot,
                    "repeat": repeat,
                    "note": "relaunch_s: RelaunchRun to terminal, through Ray, the recorder and "
                    "the "
                    "registry; direct_s: the same spec and components in one process, nothing "
                    "recorded; startup_s: store + services + Ray, paid once per process",
                },
                indent=2,
            )
        )
    finally:
        for s in servers:
            s.stop(0.5)
        store.stop()


if __name__ == "__main__":
    main()
