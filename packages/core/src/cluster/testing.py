"""For tests: real clusters (``LocalCluster``), and the metadata store contract as tests.

``LocalCluster``: a head and nodes started through the CLI, on 127.0.0.1.

    with LocalCluster(tmp_path) as lc:          # head with 1 CPU
        lc.add_node(num_cpus=1)                 # a second node daemon
        lc.connect()                            # cluster.init(lc.address, token=lc.token)
        ...

Everything runs in its own ``CLUSTER_TMPDIR``, so tests never see each other's clusters or the
user's. On exit, ``cluster stop`` stops the daemons by their recorded pids, and any process
still alive that the cluster started (found by walking the daemons' children) is killed.

``MetadataStoreConformance``: the checks every metadata store passes (core's SQLite store in
core's tests, a plugin's store in its package's tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cluster
from cluster.contracts import MetadataStore
from cluster.plugins import make_metadata_store


def _node_args(labels: dict | None, num_gpus: float | None) -> list[str]:
    args = ["--labels", json.dumps(labels)] if labels else []
    return args + (["--num-gpus", str(num_gpus)] if num_gpus is not None else [])


class LocalCluster:
    """A head (and optionally more node daemons) started with ``cluster start``."""

    def __init__(self, root: str | os.PathLike, *, num_cpus: float = 1, resources: dict | None = None,
                 heartbeat_timeout: float = 10.0, object_store_memory: int | None = None,
                 object_spilling: bool = True, object_store: str = "shared",
                 head_args: list[str] | None = None, labels: dict | None = None, num_gpus: float | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "CLUSTER_TMPDIR": str(self.root)}
        self.env.pop("CLUSTER_ADDRESS", None)
        self.env.pop("CLUSTER_TOKEN", None)
        self._head_args = ["--num-cpus", str(num_cpus), "--resources", json.dumps(resources or {}),
                           "--heartbeat-timeout", str(heartbeat_timeout), *_node_args(labels, num_gpus)]
        if object_store_memory is not None:
            self._head_args += ["--object-store-memory", str(object_store_memory)]
        if not object_spilling:
            self._head_args += ["--no-object-spilling"]
        self._store_args = ["--object-store", object_store]
        self._head_args += self._store_args
        self._head_args += ["--dashboard-port", "0", *(head_args or [])]  # any free port: tests run side by side
        self.dashboard_url = ""
        self.address = ""
        self.token = ""
        self.cluster_id = ""
        self.head_pid = 0
        self.pids: list[int] = []
        self._saved_env: dict[str, str | None] = {}

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``cluster ARGS`` in this cluster's environment; returns the finished process."""
        proc = subprocess.run([sys.executable, "-m", "cluster", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"cluster {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self) -> LocalCluster:
        self.cli("start", "--head", "--port", "0", *self._head_args)
        current = json.loads((self.root / "current.json").read_text())
        self.address = current["address"]
        self.token = Path(current["token_file"]).read_text().strip()
        self.dashboard_url = current.get("dashboard_url") or ""
        self.cluster_id = current.get("cluster_id") or ""
        self.head_pid = current["pid"]
        self.pids.append(current["pid"])
        return self

    def kill_head(self, signum: int = signal.SIGKILL) -> int:
        """Signal the head daemon (SIGKILL: it dies at once, its own workers with it); its pid."""
        pid = self.head_pid
        os.kill(pid, signum)
        return pid

    def restart_head(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        """``cluster start --head`` again where the head was: its port, its HTTP API's port and
        its options (give the cluster ``--metadata-store`` in ``head_args`` to have it come back
        as the same cluster). Returns the finished ``cluster start``."""
        args = list(self._head_args)
        if self.dashboard_url and "--dashboard-port" in args:
            args[args.index("--dashboard-port") + 1] = self.dashboard_url.rpartition(":")[2]
        proc = self.cli("start", "--head", "--port", self.address.rpartition(":")[2], *args, *extra, check=check)
        if proc.returncode == 0:
            current = json.loads((self.root / "current.json").read_text())
            assert current["address"] == self.address, (current, self.address)
            self.head_pid = current["pid"]
            self.pids.append(current["pid"])
        return proc

    def add_node(self, *, num_cpus: float = 1, resources: dict | None = None,
                 object_store_memory: int | None = None, labels: dict | None = None,
                 num_gpus: float | None = None) -> dict[str, Any]:
        """Start a node daemon that joins this cluster; its daemon record (``node_id``, ``pid``...)."""
        before = {r["pid"] for r in self.daemon_records()}
        extra = ["--object-store-memory", str(object_store_memory)] if object_store_memory else []
        extra += _node_args(labels, num_gpus)
        self.cli("start", "--address", self.address, "--num-cpus", str(num_cpus),
                 "--resources", json.dumps(resources or {}), *extra, *self._store_args)
        record = next(r for r in self.daemon_records() if r["pid"] not in before)
        self.pids.append(record["pid"])
        return record

    def daemon_records(self) -> list[dict[str, Any]]:
        folder = self.root / "daemons"
        return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []

    def connect(self) -> Any:
        """``cluster.init`` this process to the cluster."""
        return cluster.init(self.address, token=self.token)

    def process_tree(self) -> list[int]:
        """Pids of the daemons and every process below them that is still alive."""
        import psutil

        found = []
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                found.append(pid)
                found += [child.pid for child in proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> None:
        """Stop every daemon of this cluster (and this process's connection, if it is to this one)."""
        if cluster.is_initialized() and getattr(cluster.api.current_runtime(), "head_address", self.address) == self.address:
            cluster.shutdown()
        leftovers = self.process_tree()
        self.cli("stop", check=False)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ metadata stores


class MetadataStoreConformance:
    """The contract of ``cluster.contracts.MetadataStore``, as tests any store's package can run.

    Subclass it in a test module with a ``metadata_store_url`` fixture that returns a URL no test
    wrote to yet; pytest then runs every check against the store that the
    ``cluster_make_metadata_store`` hook opens for it (so the plugin's registration is checked
    too)::

        class TestSqliteMetadataStore(MetadataStoreConformance):
            @pytest.fixture
            def metadata_store_url(self, tmp_path):
                return f"sqlite:///{tmp_path / 'metadata.db'}"

    What the head relies on: values are JSON documents, given back as new objects; ``items``
    lists a table in the order its keys were first written, as a dict does (an overwrite keeps a
    key's place; a key deleted and written again goes last), so a restarted head lists its jobs
    oldest first as the one before it did; every write is there for a new store object on the
    same URL, also after ``close``; tables never see each other's keys.
    """

    def test_a_missing_key_is_none_and_deleting_it_is_false(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            assert store.get("jobs", "nobody") is None
            assert store.delete("jobs", "nobody") is False
            assert store.items("jobs") == []

    def test_a_value_comes_back_as_the_json_it_was(self, metadata_store_url: str) -> None:
        values = {
            "record": {"status": "SUCCEEDED", "exit_code": 0, "start": 1.5, "ok": True,
                       "labels": {"b": "2", "a": "1"}, "none": None, "list": [1, "two", [3.0]]},
            "number": 42, "float": 0.1, "text": "plain", "true": True, "null": None,
            "tuple": (1, 2),  # JSON has no tuples: back as a list
        }
        with _opened(metadata_store_url) as store:
            for key, value in values.items():
                store.put("jobs", key, value)
            for key, value in values.items():
                got = store.get("jobs", key)
                expected = list(value) if isinstance(value, tuple) else value
                assert got == expected and type(got) is type(expected), (key, got)
            assert list(store.get("jobs", "record")["labels"]) == ["b", "a"]  # a document keeps its key order
            assert dict(store.items("jobs")) == {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def test_a_value_is_copied_in_and_out(self, metadata_store_url: str) -> None:
        record = {"status": "PENDING", "tags": ["a"]}
        with _opened(metadata_store_url) as store:
            store.put("jobs", "j1", record)
            record["status"] = "changed after the put"
            got = store.get("jobs", "j1")
            assert got == {"status": "PENDING", "tags": ["a"]}
            got["tags"].append("changed after the get")
            assert store.get("jobs", "j1") == {"status": "PENDING", "tags": ["a"]}

    def test_a_value_that_is_not_json_is_refused_and_changes_nothing(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            store.put("jobs", "j1", {"v": 1})
            for bad in ({1, 2}, b"bytes", object()):
                for key, value in (("j1", {"v": bad}), ("new", bad)):
                    try:
                        store.put("jobs", key, value)
                    except TypeError:
                        continue
                    raise AssertionError(f"a put of {value!r} did not raise TypeError")
            assert store.items("jobs") == [("j1", {"v": 1})]

    def test_an_overwrite_replaces_the_value_and_keeps_the_key_s_place(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            for key in ("a", "b", "c"):
                store.put("jobs", key, {"v": key})
            store.put("jobs", "a", {"v": "a2"})
            assert store.get("jobs", "a") == {"v": "a2"}
            assert store.items("jobs") == [("a", {"v": "a2"}), ("b", {"v": "b"}), ("c", {"v": "c"})]

    def test_items_come_in_the_order_keys_were_first_written_not_sorted(self, metadata_store_url: str) -> None:
        keys = [f"job-{(i * 37) % 101:03d}" for i in range(101)]  # a fixed order that is not sorted
        with _opened(metadata_store_url) as store:
            for i, key in enumerate(keys):
                store.put("jobs", key, i)
            for key in reversed(keys[::3]):  # a job's record is written again as it runs and ends
                store.put("jobs", key, "again")
            assert store.items("jobs") == [(key, "again" if i % 3 == 0 else i) for i, key in enumerate(keys)]

    def test_a_deleted_key_is_gone_and_written_again_comes_last(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            for key in ("a", "b", "c"):
                store.put("jobs", key, key)
            assert store.delete("jobs", "a") is True
            assert store.delete("jobs", "a") is False
            assert store.get("jobs", "a") is None
            assert store.items("jobs") == [("b", "b"), ("c", "c")]
            store.put("jobs", "a", "again")
            assert store.items("jobs") == [("b", "b"), ("c", "c"), ("a", "again")]

    def test_tables_are_independent(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            store.put("jobs", "x", "a job")
            store.put("nodes", "x", "a node")
            # names that would meet if a store joined table and key with a separator
            store.put("a", "b:c", "table a")
            store.put("a:b", "c", "table a:b")
            store.put("a/b", "c", "table a/b")
            assert store.delete("jobs", "x") is True
            assert store.get("nodes", "x") == "a node"
            assert store.items("jobs") == []
            assert store.items("nodes") == [("x", "a node")]
            assert store.items("a") == [("b:c", "table a")]
            assert store.items("a:b") == [("c", "table a:b")]
            assert store.items("a/b") == [("c", "table a/b")]

    def test_unicode_in_tables_keys_and_values(self, metadata_store_url: str) -> None:
        value = {"message": "日本語のログ 🎉", "ü": "naïve café", "nul": "a\x00b", "quote": "\"'\\"}
        with _opened(metadata_store_url) as store:
            store.put("jöbs", "задача-1 ✓", value)
            store.put("jöbs", "", "the empty key")
            assert store.get("jöbs", "задача-1 ✓") == value
            assert store.items("jöbs") == [("задача-1 ✓", value), ("", "the empty key")]
            assert store.items("jobs") == []

    def test_a_large_value_round_trips(self, metadata_store_url: str) -> None:
        value = {"log": "x" * (4 << 20), "numbers": list(range(100_000))}
        with _opened(metadata_store_url) as store:
            store.put("jobs", "big", value)
            store.put("jobs", "small", 1)
            assert store.get("jobs", "big") == value
            assert store.items("jobs") == [("big", value), ("small", 1)]

    def test_a_new_store_on_the_same_url_sees_every_write_in_order(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as store:
            for key in ("a", "b", "c", "d"):
                store.put("jobs", key, {"v": key})
            store.delete("jobs", "b")
            store.put("jobs", "a", {"v": "a2"})
            store.put("nodes", "n1", "alive")
        with _opened(metadata_store_url) as again:
            assert again.items("jobs") == [("a", {"v": "a2"}), ("c", {"v": "c"}), ("d", {"v": "d"})]
            assert again.get("jobs", "b") is None
            assert again.items("nodes") == [("n1", "alive")]

    def test_two_stores_open_on_one_url_see_each_others_writes(self, metadata_store_url: str) -> None:
        with _opened(metadata_store_url) as one, _opened(metadata_store_url) as two:
            one.put("jobs", "j1", "from one")
            assert two.get("jobs", "j1") == "from one"
            two.put("jobs", "j1", "from two")
            two.put("jobs", "j2", "from two")
            assert one.items("jobs") == [("j1", "from two"), ("j2", "from two")]
            assert one.delete("jobs", "j2") is True
            assert two.get("jobs", "j2") is None

    def test_close_keeps_what_was_written_and_may_be_repeated(self, metadata_store_url: str) -> None:
        store = make_metadata_store(metadata_store_url)
        store.put("jobs", "j1", "kept")
        store.close()
        store.close()
        with _opened(metadata_store_url) as again:
            assert again.get("jobs", "j1") == "kept"


@contextlib.contextmanager
def _opened(url: str) -> Iterator[MetadataStore]:
    store = make_metadata_store(url)
    try:
        yield store
    finally:
        store.close()
