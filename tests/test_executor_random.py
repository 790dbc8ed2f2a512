"""The paper's evaluation as a test: random IONs of 2 to 10 dependent pipelines mixing the
patterns are launched, captured, relaunched in one step, and verified MATCH on every node."""

# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.patterns.generate import random_ion_yaml
from relive.executor.v1 import executor_pb2 as pb
from tests.executor_fixtures import InProcessStack, ray_session, since, stack  # noqa: F401


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_random_ion_relaunch_matches_on_every_node(
    stack: InProcessStack, tmp_path_factory, seed: int
) -> None:
    name = f"rnd-{seed}"
    path = tmp_path_factory.mktemp("ion") / f"{name}.yaml"
    path.write_text(random_ion_yaml(seed, name))
    start = since()
    ion = stack.register(path)
    original = stack.run_to_end(ion, seed=seed + 1)
    assert original.state == pb.RUN_STATE_SUCCEEDED, original.error_message
    pipelines = [n for n, d in original.spec.definition.nodes.items() if d.HasField("pipeline")]
    assert 2 <= len(pipelines) <= 10

    capture = stack.capture(ion, start)
    relaunch = stack.executor.wait(stack.executor.relaunch(capture=capture).name, timeout=300)
    assert relaunch.state == pb.RUN_STATE_SUCCEEDED, relaunch.error_message

    verification = stack.executor.verify(original.name, relaunch.name)
    assert {n.node: pb.VerificationStatus.Name(n.status) for n in verification.nodes} == {
        n: "VERIFICATION_STATUS_MATCH" for n in original.spec.definition.nodes
    }, [(n.node, n.reason) for n in verification.nodes if n.reason]
    assert verification.status == pb.VERIFICATION_STATUS_MATCH
