"""cluster-client's wire types travel through core's codec, and its services (the job manager,
the job runner) answer a payload they do not handle with a clear error."""

from __future__ import annotations

from typing import Any

import pytest
from cluster_client.jobs import MANAGER_SERVICE, RUNNER_SERVICE, JobManager
from cluster_client.messages import (
    FetchPackageChunk,
    JobExited,
    JobLog,
    JobRunning,
    PackageChunk,
    PackageMissing,
    PrepareWorkingDir,
    StartJob,
    StartJobReply,
    StopJob,
)
from cluster_client.runner import JobRunner

from cluster.head.metadata import SqliteMetadataStore
from cluster.wire import codec
from cluster.wire import messages as m

EVERY_TYPE = [
    StartJob("job_1", "python run.py", {"CPU": 1.0}, {"N": "3"}, "pkg_" + "0" * 32 + ".zip"),
    StartJob("job_2", "true", {}, {}),
    StartJobReply(True),
    StartJobReply(False, "busy"),
    StopJob("job_1"),
    PrepareWorkingDir("pkg_" + "0" * 32 + ".zip"),
    FetchPackageChunk("pkg_" + "0" * 32 + ".zip", 4 << 20),
    PackageChunk(b"PK\x03\x04", 4),
    PackageMissing("the head has no package pkg_x.zip"),
    JobRunning("job_1", 4242),
    JobLog("job_1", b"hello\n"),
    JobExited("job_1", -15),
    JobExited("job_1", None, "could not set up its working dir on node n1: boom"),
]


def _round_trip(msg: Any) -> Any:
    decoded, request_id = codec.decode(codec.encode(msg, 7)[4:])
    assert request_id == 7
    return decoded


@pytest.mark.parametrize("msg", EVERY_TYPE, ids=lambda msg: type(msg).__name__)
def test_each_type_round_trips_alone_as_a_payload_and_as_a_reply(msg: Any) -> None:
    assert _round_trip(msg) == msg
    assert _round_trip(m.ServiceRequest("any", msg)) == m.ServiceRequest("any", msg)
    assert _round_trip(m.Ok(msg)) == m.Ok(msg)


def test_tags_are_in_the_client_s_range() -> None:
    assert all(200 <= type(msg).TAG < 300 for msg in EVERY_TYPE)
    assert len({type(msg) for msg in EVERY_TYPE}) == len([t for t in m.MESSAGE_TYPES if 200 <= t < 300])


def test_an_invalid_value_cannot_be_built() -> None:
    with pytest.raises(TypeError):
        StartJob("job_1", "true", {"CPU": "one"}, {})
    with pytest.raises(TypeError):
        JobExited("job_1", "0")  # type: ignore[arg-type]


class _Conn:
    closed = False

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.errors: list[tuple[int, str, str]] = []

    def reply(self, request_id: int, value: Any = None) -> None:
        self.replies.append((request_id, value))

    def reply_error(self, request_id: int, kind: str, message: str) -> None:
        self.errors.append((request_id, kind, message))


class _Daemon:
    """What the services read of their head or node daemon before any job runs."""

    token = "t"

    def __init__(self, tmp_path: Any) -> None:
        self.session_dir = str(tmp_path)
        self.metadata = SqliteMetadataStore(str(tmp_path / "metadata.sqlite"))


def _ask(handler: Any, service: str, payload: Any) -> _Conn:
    """``payload`` as a service's handler receives it: encoded, decoded, then handled."""
    conn = _Conn()
    request, request_id = codec.decode(codec.encode(m.ServiceRequest(service, payload), 5)[4:])
    handler(conn, request.payload, request_id)
    return conn


WRONG = [{"op": "start", "submission_id": "job_1"}, "start", m.LogLines("add", 12, "stdout", "hi")]
WRONG_IDS = ["a dict", "a str", "another message"]


@pytest.mark.parametrize("payload", WRONG, ids=WRONG_IDS)
def test_the_job_manager_refuses_a_payload_of_another_type(tmp_path, payload: Any) -> None:
    conn = _ask(JobManager(_Daemon(tmp_path))._on_report, MANAGER_SERVICE, payload)
    assert conn.replies == []
    assert conn.errors == [(5, "unexpected", f"the job manager does not handle {type(payload).__name__}")]


def test_the_job_manager_serves_package_chunks(tmp_path) -> None:
    jobs = JobManager(_Daemon(tmp_path))
    name = "pkg_" + "0" * 32 + ".zip"
    [(_, missing)] = _ask(jobs._on_report, MANAGER_SERVICE, FetchPackageChunk(name, 0)).replies
    assert missing == PackageMissing(f"the head has no package {name}")
    (jobs.package_dir / name).write_bytes(b"zipped")
    [(_, chunk)] = _ask(jobs._on_report, MANAGER_SERVICE, FetchPackageChunk(name, 2)).replies
    assert chunk == PackageChunk(b"pped", 6)
    [(_, gone)] = _ask(jobs._on_report, MANAGER_SERVICE, JobRunning("job_deleted", 1)).replies
    assert gone is False  # a report about a job the head no longer has


@pytest.mark.parametrize("payload", [*WRONG, JobRunning("job_1", 1)], ids=[*WRONG_IDS, "a report"])
def test_the_job_runner_refuses_a_payload_of_another_type(tmp_path, payload: Any) -> None:
    conn = _ask(JobRunner(_Daemon(tmp_path))._on_request, RUNNER_SERVICE, payload)
    assert conn.replies == []
    assert conn.errors == [(5, "unexpected", f"the job runner does not handle {type(payload).__name__}")]
