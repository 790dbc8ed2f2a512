"""What the recorder holds about a run, read for a relaunch and for verification: its launch
spec (from its ``run.launched`` event), and its events."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf import json_format

from relive import errors
from relive.executor import inputs, relaunch
from relive.executor.backends import Recorder
from relive.executor.store import RunStore
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.verify import verify as compare_runs
from relive.pipeline.events import struct_to_dict
from relive.recorder.v1 import event_pb2
from relive.registry.v1 import registry_pb2


def ion_of(run_name: str) -> str:
    return "/".join(run_name.split("/")[:2])


def spec_from_event(e: event_pb2.Event) -> pb.LaunchSpec:
    details = json_format.MessageToDict(e.lifecycle.details, preserving_proto_field_name=True)
    spec = pb.LaunchSpec()
    json_format.ParseDict(details.get("spec", {}), spec, ignore_unknown_fields=True)
    return spec


class RecordedRuns:
    """Runs as recorded: by this executor's store where it has them, else by the recorder
    (a run of another deployment, imported with a capture)."""

    def __init__(
        self,
        recorder: Recorder,
        store: RunStore,
        snapshots: Callable[..., Mapping[str, registry_pb2.CodeSnapshot]] = lambda *_: {},
    ) -> None:
        self.recorder = recorder
        self.store = store
        # The stored code snapshots two specs name, for which files of a tree changed.
        self.snapshots = snapshots

    def spec_of_run(self, name: str, project: str) -> tuple[pb.LaunchSpec, str]:
        run = self.store.get(name)
        if run is not None:
            return run.spec, name
        ion = ion_of(name)
        for e in self.recorder.events(ion, project=project, runs=[name], types=["run.launched"]):
            return spec_from_event(e), name
        raise errors.NotFound(
            f"run {name} does not exist here, and the recorder holds no run.launched event for it",
            field="run",
        )

    def spec_of_capture(self, name: str, project: str) -> tuple[pb.LaunchSpec, str]:
        """The launch spec in a capture's window, and the run it launched."""
        cap = self.recorder.get_capture(name, project)
        ion = "/".join(name.split("/")[:2])
        for e in self.recorder.events(
            ion, project=project, types=["run.launched"], start=cap.start_time, end=cap.end_time
        ):
            if e.type == "run.launched" and "spec" in struct_to_dict(e.lifecycle.details):
                return spec_from_event(e), e.run
        raise errors.FailedPrecondition(
            f"capture {name} holds no launch spec: there is no run.launched event in its window "
            f"{cap.start_time.ToJsonString()} to {cap.end_time.ToJsonString()}; make a capture "
            "whose window covers the launch",
            field="capture",
            reason="NO_LAUNCH_SPEC",
        )

    def for_relaunch(self, ion: str, project: str, run: str) -> relaunch.Recorded:
        """What ``run`` recorded that a relaunch replays."""
        events = self.recorder.events(
            ion, project=project, runs=[run], types=relaunch.recorded_types()
        )
        return relaunch.read_recorded(events, self.store.get(run))

    def verify(
        self,
        original: tuple[str, str],
        relaunched: tuple[str, str],
        tolerance: float,
    ) -> pb.Verification:
        """Compares two runs, each given as (run name, project), node by node."""
        (name_a, project_a), (name_b, project_b) = original, relaunched
        a = list(self.recorder.events(ion_of(name_a), project=project_a, runs=[name_a]))
        b = list(self.recorder.events(ion_of(name_b), project=project_b, runs=[name_b]))
        for events, name, field in ((a, name_a, "original"), (b, name_b, "relaunch")):
            if not events:
                raise errors.NotFound(f"the recorder holds no events of run {name}", field=field)
        spec_a, spec_b = (
            next((spec_from_event(e) for e in events if e.type == "run.launched"), None)
            for events in (a, b)
        )
        if spec_a is not None:
            nodes = sorted(spec_a.definition.nodes)
        else:
            nodes = sorted({e.node for e in a if e.node})
        differences: list[pb.InputDifference] = []
        causes: dict[str, str] = {}
        if spec_a is not None and spec_b is not None:
            snapshots = self.snapshots(project_a, spec_a, spec_b)
            differences = inputs.differences(spec_a, spec_b, snapshots)
            causes = inputs.likely_causes(spec_a, differences)
        stored = self.store.get(name_a)
        outputs = {n.node: dict(n.outputs) for n in stored.nodes} if stored else None
        return compare_runs(name_a, name_b, nodes, a, b, tolerance, outputs, differences, causes)
