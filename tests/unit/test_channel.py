"""Where the services are (endpoints, the data-dir default), project metadata, and the one
retry policy every channel carries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relive.client import channel
from relive.core.config import Config
from relive.errors import ReliveError

ENDPOINTS = {"registry": "h:1", "recorder": "h:2", "executor": "h:3", "mongodb": "mongodb://m"}


def test_the_data_dir_is_relive_here_unless_relive_data_dir_says() -> None:
    assert channel.default_data_dir({}) == Path(".relive")
    assert channel.default_data_dir({"RELIVE_DATA_DIR": "/srv/relive"}) == Path("/srv/relive")
    # The services read the same default.
    assert Config.from_env({}).data_dir == Path(".relive") == Config().data_dir
    assert Config.from_env({"RELIVE_DATA_DIR": "/d"}).data_dir == Path("/d")


def test_endpoints_come_from_the_data_dirs_file(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps(ENDPOINTS))
    found = channel.load_endpoints({"RELIVE_DATA_DIR": str(tmp_path)})
    assert found == channel.Endpoints("h:1", "h:2", "h:3", "mongodb://m")


def test_relive_endpoint_names_one_address_or_a_file_and_each_service_can_override(
    tmp_path: Path,
) -> None:
    one = channel.load_endpoints({"RELIVE_ENDPOINT": "gw:443"})
    assert (one.registry, one.recorder, one.executor) == ("gw:443",) * 3
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps(ENDPOINTS))
    found = channel.load_endpoints(
        {"RELIVE_ENDPOINT": str(path), "RELIVE_RECORDER_ENDPOINT": "rec:9"}
    )
    assert (found.registry, found.recorder) == ("h:1", "rec:9")


def test_no_endpoints_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ReliveError) as caught:
        channel.load_endpoints({"RELIVE_DATA_DIR": str(tmp_path)})
    assert caught.value.field == "RELIVE_ENDPOINT"
    assert "relive up" in caught.value.message
    assert str(tmp_path / "endpoints.json") in caught.value.message


def test_project_metadata_is_one_pair_or_nothing() -> None:
    assert channel.project_metadata("team-a") == (("relive-project", "team-a"),)
    assert channel.project_metadata("") == () == channel.project_metadata(None)


def test_the_retry_policy_retries_unavailable_only_and_never_an_approval() -> None:
    config = json.loads(channel.retry_service_config())
    default, no_retry = config["methodConfig"]
    assert default["name"] == [{}]  # every method
    policy = default["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5
    for key in ("initialBackoff", "maxBackoff"):
        assert policy[key].endswith("s") and float(policy[key][:-1]) > 0
    assert policy["backoffMultiplier"] > 1
    assert no_retry == {
        "name": [{"service": "relive.executor.v1.ExecutorService", "method": "SubmitApproval"}]
    }
    assert "retryPolicy" not in no_retry
    options = dict(channel.CHANNEL_OPTIONS)
    assert options["grpc.enable_retries"] == 1
    assert json.loads(str(options["grpc.service_config"])) == config


def test_access_rides_a_subprocess_environment() -> None:
    access = channel.Access(token="t", project="p", tls_ca="/ca.pem")
    assert access.environ() == {
        "RELIVE_TOKEN": "t",
        "RELIVE_PROJECT": "p",
        "RELIVE_TLS_CA": "/ca.pem",
    }
    assert access.for_project("q").project == "q"
    assert "token" not in repr(access)  # a token never lands in a log
