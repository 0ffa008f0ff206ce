"""Ray's parameters, accepted as Ray documents them (docs/ray-compatibility.md says what each
does here): a Ray program's first lines must not fail on them."""

from __future__ import annotations

import copy

import pytest

import cluster
from cluster.exceptions import ConfigError


@cluster.remote
def plus_one(x: int) -> int:
    return x + 1


@cluster.remote
class Box:
    def __init__(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        return self.value


def test_init_takes_rays_parameters_and_namespace_scopes_actor_names(make_cluster):
    lc = make_cluster(num_cpus=1)
    cluster.init(lc.address, token=lc.token, namespace="team-a", include_dashboard=False,
                 logging_level="WARNING", configure_logging=True, job_config=None,
                 _node_ip_address="127.0.0.1", _system_config={"object_timeout_milliseconds": 200})
    Box.options(name="box", lifetime="non_detached").remote(5)
    assert cluster.get(cluster.get_actor("box").get.remote(), timeout=60) == 5
    assert cluster.get(cluster.get_actor("box", namespace="team-a").get.remote(), timeout=60) == 5
    with pytest.raises(ValueError, match="no actor named 'box' in namespace 'default'"):
        cluster.get_actor("box", namespace="default")
    Box.options(name="box", namespace="default").remote(7)  # the same name, another namespace
    assert cluster.get(cluster.get_actor("box", namespace="default").get.remote(), timeout=60) == 7

    @cluster.remote
    def from_a_task() -> tuple:
        import cluster

        # A task works in its caller's namespace: the names it uses are the caller's.
        return cluster.get_runtime_context().namespace, cluster.get(cluster.get_actor("box").get.remote())

    assert cluster.get(from_a_task.remote(), timeout=60) == ("team-a", 5)


def test_task_and_actor_options_of_ray_are_accepted(make_cluster):
    lc = make_cluster(num_cpus=1, labels={"zone": "a"})
    lc.connect()
    f = plus_one.options(memory=100 * 1024**2, scheduling_strategy="SPREAD", max_calls=1,
                         label_selector={"zone": "a"}, enable_task_events=False, fallback_strategy=None,
                         placement_group="default", _generator_backpressure_num_objects=2)
    assert cluster.get(f.remote(1), timeout=60) == 2
    box = Box.options(memory=10**6, max_pending_calls=100, concurrency_groups={"io": 2},
                      allow_out_of_order_execution=False, scheduling_strategy="DEFAULT").remote(3)
    assert cluster.get(box.get.remote(), timeout=60) == 3

    @cluster.remote(memory=1, max_calls=2, num_returns=1)
    def decorated() -> str:
        return "ok"

    assert cluster.get(decorated.remote(), timeout=60) == "ok"


def test_rays_options_that_cannot_work_yet_say_so(make_cluster):
    for bad, said in [({"object_store_memory": 10}, "not implemented for tasks"),
                      ({"runtime_env": {"conda": "env"}}, r"\['conda'\] are not supported here"),
                      ({"scheduling_strategy": object()}, "is not one of \"DEFAULT\", \"SPREAD\""),
                      ({"label_selector": {"zone": "in()"}}, r"in\(\.\.\.\) takes one or more plain values"),
                      ({"max_calls": -1}, "max_calls must be"),
                      ({"memory": -5}, "memory must be a non-negative number")]:
        with pytest.raises(ConfigError, match=said):
            plus_one.options(**bad)
    with pytest.raises(ConfigError, match="unknown keyword argument"):
        cluster.init(_no_such_option=1)
    with pytest.raises(ConfigError, match=r"unknown cluster.init\(runtime_env=\.\.\.\) field\(s\) \['nope'\]"):
        cluster.init(runtime_env={"nope": 1})
    assert not cluster.is_initialized()


def test_accelerator_type_needs_a_node_that_offers_it(make_cluster):
    lc = make_cluster(num_cpus=1, resources={"accelerator_type:T4": 1})
    lc.connect()
    assert cluster.get(plus_one.options(accelerator_type="T4").remote(1), timeout=60) == 2


def test_wait_on_nothing_and_rays_other_names(shared_cluster):
    assert cluster.wait([]) == ([], [])
    assert cluster.wait([], num_returns=0, fetch_local=False) == ([], [])
    ref = plus_one.remote(1)
    assert isinstance(ref, cluster.ObjectID) and cluster.ObjectID is cluster.ObjectRef
    assert ref.binary() == bytes.fromhex(ref.hex())
    cluster.cancel(plus_one.remote(2), recursive=True)  # accepted
    assert cluster.get(ref, timeout=60) == 2
    same = copy.copy(ref)  # another ObjectRef of the same object
    assert same is not ref and same == ref and hash(same) == hash(ref) and {ref: "x"}[same] == "x"
    assert ref != plus_one.remote(1)
    with pytest.raises(TypeError, match=r"remote function plus_one cannot be called directly; use plus_one.remote"):
        plus_one(1)
    with pytest.raises(TypeError, match=r"actor class Box cannot be instantiated directly; use Box.remote"):
        Box(1)


def test_arguments_that_do_not_bind_fail_at_remote_in_the_caller(shared_cluster):
    with pytest.raises(TypeError, match=r"plus_one.remote\(\): missing a required argument: 'x'"):
        plus_one.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        plus_one.remote(1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        plus_one.remote(1, y=2)
    assert cluster.get(plus_one.remote(x=1), timeout=60) == 2
    with pytest.raises(TypeError, match=r"Box.remote\(\): missing a required argument: 'value'"):
        Box.remote()

    @cluster.remote
    class Plain:
        def get(self) -> str:
            return "plain"

    with pytest.raises(TypeError, match=r"Plain.remote\(\): Plain\(\) takes no arguments"):
        Plain.remote(1)
    assert cluster.get(Plain.remote().get.remote(), timeout=60) == "plain"

    box = Box.remote(5)  # an actor method's arguments too, also through a handle passed elsewhere
    with pytest.raises(TypeError, match=r"Box.get.remote\(\): too many positional arguments"):
        box.get.remote(1)

    @cluster.remote
    def misuse(handle) -> str:
        try:
            handle.get.remote(extra=1)
        except TypeError as exc:
            return str(exc)
        return "no error"

    assert cluster.get(misuse.remote(box), timeout=60) == "Box.get.remote(): got an unexpected keyword argument 'extra'"
    assert cluster.get(box.get.remote(), timeout=60) == 5


def test_the_runtime_context_says_where_and_as_what_code_runs(shared_cluster, node_ids):
    context = cluster.get_runtime_context()
    assert context.get_node_id() == node_ids["head"]  # this driver's node
    assert context.get_task_id() is None and context.get_actor_id() is None
    assert context.namespace == "default"

    @cluster.remote(resources={"b": 0.01})
    def inside() -> dict:
        import cluster

        return cluster.get_runtime_context().get()

    ref = inside.remote()
    seen = cluster.get(ref, timeout=60)
    assert seen["node_id"] == node_ids["node"] and seen["task_id"] == ref.hex()[:32]
    assert seen["actor_id"] is None

    @cluster.remote(max_concurrency=4)
    class Where:
        def ids(self) -> tuple:
            import cluster

            context = cluster.get_runtime_context()
            return context.get_actor_id(), context.get_task_id()

        async def ids_async(self) -> tuple:
            import cluster

            context = cluster.get_runtime_context()
            return context.get_actor_id(), context.get_task_id()

    actor = Where.remote()
    calls = [actor.ids.remote() for _ in range(2)] + [actor.ids_async.remote() for _ in range(4)]
    for call, (actor_id, task_id) in zip(calls, cluster.get(calls, timeout=60), strict=True):
        assert actor_id == actor._actor_id.hex() and task_id == call.hex()[:32]


def test_exit_actor_ends_it_for_good_and_runs_its_atexit_handlers(shared_cluster, tmp_path, e2e):
    import os

    from cluster.exceptions import ActorDiedError

    with pytest.raises(TypeError, match="only be called inside an actor"):
        cluster.actor.exit_actor()

    @cluster.remote(max_restarts=2)
    class Leaving:
        def __init__(self, marker: str) -> None:
            import atexit

            atexit.register(lambda: open(marker, "w").close())

        def ping(self) -> str:
            return "pong"

        def leave(self) -> None:
            import cluster

            cluster.actor.exit_actor()

        async def leave_async(self) -> None:  # (makes it an async actor: calls run on its event loop)
            import cluster

            cluster.actor.exit_actor()

    for method in ("leave", "leave_async"):
        marker = str(tmp_path / f"{method}.atexit")
        actor = Leaving.remote(marker)
        assert cluster.get(actor.ping.remote(), timeout=60) == "pong"
        with pytest.raises(ActorDiedError, match=r"exited intentionally \(exit_actor\(\) in Leaving\." + method):
            cluster.get(getattr(actor, method).remote(), timeout=60)
        with pytest.raises(ActorDiedError, match="exited intentionally"):
            cluster.get(actor.ping.remote(), timeout=60)  # not restarted, though max_restarts=2
        e2e.wait_until(lambda marker=marker: os.path.exists(marker), timeout=30, what="its atexit handler")


def test_an_actor_class_cannot_be_subclassed_but_its_plain_base_can(shared_cluster):
    with pytest.raises(TypeError, match="actor class Box cannot be subclassed"):
        class Bigger(Box):
            pass

    class Base:
        unit = 10

        def scaled(self, n: int) -> int:
            return n * type(self).unit

    @cluster.remote
    class Derived(Base):
        def twice(self, n: int) -> int:
            return 2 * self.scaled(n)

    assert cluster.get(Derived.remote().twice.remote(2), timeout=60) == 40


def test_a_value_that_cannot_be_serialized_is_named_with_where_it_was_found(shared_cluster):
    import threading

    class Holder:
        def __init__(self) -> None:
            self.conn = threading.Lock()

    with pytest.raises(TypeError, match=r"the part that cannot be pickled: arguments\['y'\]\[1\]\.conn \(a lock\)"):
        _two_args.remote(1, y=[1, Holder()])

    @cluster.remote
    def returns_a_lock() -> dict:
        import threading

        return {"ok": 1, "bad": threading.Lock()}

    with pytest.raises(TypeError) as excinfo:
        cluster.get(returns_a_lock.remote(), timeout=60)
    message = str(excinfo.value)
    assert "could not serialize its return value" in message and "the value['bad'] (a lock)" in message
    assert "cloudpickle" not in message, message  # no frames of ours or of cloudpickle

    lock = threading.Lock()

    @cluster.remote
    def captures() -> bool:
        return lock.locked()

    with pytest.raises(TypeError, match=r"remote function .*captures's captured lock \(a lock\)"):
        captures.remote()


@cluster.remote
def _two_args(x: int, y: object = None) -> int:
    return x


def test_class_attributes_redefinitions_and_oversized_captures(shared_cluster):
    @cluster.remote
    class Scaled:
        factor = 3

        @staticmethod
        def double(n: int) -> int:
            return 2 * n

        def apply(self, n: int) -> int:
            return Scaled.double(n) * Scaled.factor  # through the decorated name, as Ray allows

    assert Scaled.factor == 3
    assert cluster.get(Scaled.remote().apply.remote(1), timeout=60) == 6

    @cluster.remote
    def version() -> int:
        return 1

    assert cluster.get(version.remote(), timeout=60) == 1

    @cluster.remote
    def version() -> int:  # (redefined on purpose: the new body runs)
        return 2

    assert cluster.get(version.remote(), timeout=60) == 2

    big = b"x" * 101_000_000

    @cluster.remote
    def captures_big() -> int:
        return len(big)

    with pytest.raises(ValueError, match=r"captures_big pickles to 101 MB, because of what it captures \(big: 101.0 MB\)"):
        captures_big.remote()
