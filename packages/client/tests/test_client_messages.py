"""cluster-client's wire types travel through core's codec, and its services (the job manager,
the job runner, the client relay, the proxy driver) answer a payload they do not handle with a
clear error."""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle
import pytest
from cluster_client.jobs import MANAGER_SERVICE, RUNNER_SERVICE, JobManager
from cluster_client.messages import (
    CALL_OPS,
    AttachProxy,
    Call,
    CallResult,
    FetchPackageChunk,
    JobExited,
    JobLog,
    JobRunning,
    OpenSession,
    PackageChunk,
    PackageMissing,
    PrepareWorkingDir,
    RelayCall,
    SessionEnded,
    SessionOpened,
    SessionOutput,
    StartJob,
    StartJobReply,
    StopJob,
)
from cluster_client.proxy import Proxy
from cluster_client.relay import RELAY_SERVICE, ClientRelay
from cluster_client.runner import JobRunner

from cluster.head.metadata import SqliteMetadataStore
from cluster.wire import codec
from cluster.wire import messages as m

CALL = Call("get", cloudpickle.dumps(([(b"\x01" * 16, "127.0.0.1:5")], 2.5)))
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
    OpenSession(),
    SessionOpened("s1", "127.0.0.1:6379", "127.0.0.1:7000", "node-1", "/tmp/session", 99),
    AttachProxy("s1", "127.0.0.1:7000", "node-1", "/tmp/session", 99),
    CALL,
    RelayCall("s1", CALL),
    CallResult(cloudpickle.dumps([1, 2]), False, {b"\x01" * 16: 2}, {b"\x02" * 16: 1}),
    CallResult(cloudpickle.dumps(KeyError("k")), True),
    SessionOutput("s1", m.LogLines("add", 12, "stdout", "adding 1 2\n")),
    SessionEnded("its proxy driver on the head exited"),
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
    with pytest.raises(ValueError, match="'op' must be in"):
        Call("no_such_op", b"")
    with pytest.raises(TypeError):
        StartJob("job_1", "true", {"CPU": "one"}, {})
    with pytest.raises(TypeError):
        JobExited("job_1", "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RelayCall("s1", b"a pickled call")  # type: ignore[arg-type]


def test_the_call_ops_are_the_proxy_s_ops_with_their_arguments() -> None:
    ops = {name[len("op_"):]: tuple(inspect.signature(fn).parameters)[2:]  # (self, grants, ...)
           for name, fn in vars(Proxy).items() if name.startswith("op_")}
    assert ops == CALL_OPS


def test_a_call_with_the_wrong_arguments_is_refused_before_it_runs() -> None:
    proxy = object.__new__(Proxy)  # no runtime: nothing may run
    result = proxy.handle(Call("wait", cloudpickle.dumps(([], 1))))
    assert result.raised and (result.refs, result.handles) == ({}, {})
    error = cloudpickle.loads(result.value)
    assert type(error) is TypeError
    assert str(error).startswith("the client's call 'wait' takes 3 argument(s) (refs, num_returns, timeout), "
                                 "got 2 argument(s)")


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


WRONG = [{"op": "start", "submission_id": "job_1"}, "start", OpenSession()]
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


@pytest.mark.parametrize("payload", [*WRONG[:2], StartJob("job_1", "true", {}, {})], ids=WRONG_IDS)
def test_the_client_relay_refuses_a_payload_of_another_type(tmp_path, payload: Any) -> None:
    conn = _ask(ClientRelay(_Daemon(tmp_path))._on_request, RELAY_SERVICE, payload)
    assert conn.replies == []
    assert conn.errors == [(5, "unexpected", f"the client relay does not handle {type(payload).__name__}")]


def test_the_client_relay_says_when_a_session_is_over(tmp_path) -> None:
    conn = _ask(ClientRelay(_Daemon(tmp_path))._on_request, RELAY_SERVICE, RelayCall("gone", CALL))
    [(request_id, kind, message)] = conn.errors
    assert (request_id, kind) == (5, "closed") and message.startswith("this client session is over")
