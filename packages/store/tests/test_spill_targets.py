"""Spilling to pluggable targets: both stores with a SpillTarget of the test's own, and the
directory target that ``spill_dir`` builds. Real files, no mocks.
"""

from __future__ import annotations

import collections
import io
import multiprocessing
import os
import pathlib
import pickle
import shutil
import threading
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import pytest
from cluster_store import (
    DirectorySpillTarget,
    MemoryStore,
    ObjectStore,
    SpillTarget,
    StoredObject,
)
from cluster_store.errors import CorruptObjectError, StoreError

Store = ObjectStore | MemoryStore
MB = 1_000_000


class BucketTarget:
    """A spill target laid out like a bucket: ``<root>/objects/<2 hex>/<name>.spilled``.

    It uses only what any file object offers (``read``/``write``), as a cloud
    target would, and counts its calls. Writes are atomic: a temp key, then a rename.
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.description = f"test bucket {root}"
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _key(self, name: str) -> pathlib.Path:
        return self.root / "objects" / name[:2] / f"{name}.spilled"

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    def write(self, name: str, source: BinaryIO, size: int) -> None:
        self._count("write")
        key = self._key(name)
        key.parent.mkdir(parents=True, exist_ok=True)
        partial = key.with_name(f".partial-{name}-{os.getpid()}-{threading.get_ident()}")
        with open(partial, "wb") as out:
            copied = 0
            while chunk := source.read(256 * 1024):
                out.write(chunk)
                copied += len(chunk)
        assert copied == size
        partial.replace(key)

    def read_into(self, name: str, dest: BinaryIO) -> bool:
        self._count("read_into")
        try:
            source = open(self._key(name), "rb")  # noqa: SIM115
        except FileNotFoundError:
            return False
        with source:
            while chunk := source.read(256 * 1024):
                dest.write(chunk)
        return True

    def size(self, name: str) -> int | None:
        self._count("size")
        try:
            return self._key(name).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> bool:
        self._count("delete")
        try:
            self._key(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def usage(self) -> tuple[int, int]:
        sizes = [path.stat().st_size for path in self.root.glob("objects/*/*.spilled")]
        return len(sizes), sum(sizes)

    def destroy(self) -> None:
        self._count("destroy")
        shutil.rmtree(self.root, ignore_errors=True)

    def remove_stale_temp_files(self) -> int:
        return 0

    def names(self) -> set[str]:
        return {path.name.removesuffix(".spilled") for path in self.root.glob("objects/*/*.spilled")}


class UnreachableTarget(BucketTarget):
    """A target whose writes fail, like a bucket that cannot be reached."""

    def write(self, name: str, source: BinaryIO, size: int) -> None:
        self._count("write")
        raise ConnectionError("the bucket is unreachable")


MakeStore = Callable[..., Store]


@pytest.fixture(params=["shared", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> MakeStore:
    """``make_store(target, capacity_bytes=...)``: a store of the parametrized kind."""

    def make(target: SpillTarget, *, capacity_bytes: int) -> Store:
        if request.param == "shared":
            return ObjectStore(tmp_path / "store", capacity_bytes=capacity_bytes, spill_target=target)
        return MemoryStore(capacity_bytes=capacity_bytes, spill_target=target)

    return make


def _parts(value: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    return pickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers


def _load(stored: StoredObject | None) -> object:
    assert stored is not None
    return pickle.loads(stored.inband, buffers=stored.buffers)


def _arrays(count: int) -> dict[bytes, np.ndarray]:
    """``count`` arrays of 1 MB, each filled with its index."""
    return {b"obj-%d" % i: np.full(125_000, i, dtype=np.float64) for i in range(count)}


# ------------------------------------------------------------------ a target of our own


def test_a_full_store_spills_to_the_target_and_reads_everything_back(make_store, tmp_path):
    target = BucketTarget(tmp_path / "bucket")
    store = make_store(target, capacity_bytes=int(3.5 * MB))
    arrays = _arrays(6)
    for object_id, array in arrays.items():
        store.put(object_id, b"", *_parts(array))

    oldest = [object_id.hex() for object_id in list(arrays)[:3]]
    assert target.names() == set(oldest)  # the least recently used went to the target
    assert target.calls["write"] == 3
    count, spilled_bytes = store.spilled()
    assert (count, spilled_bytes) == target.usage() and count == 3
    stats = store.stats()
    assert (stats.spilled_objects, stats.spilled_bytes) == (count, spilled_bytes)
    assert sorted(store.object_ids()) == sorted(list(arrays)[3:])
    for object_id in arrays:  # spilled objects are still in the store, as far as callers see
        assert store.contains(object_id) and store.size_of(object_id)

    for object_id, array in arrays.items():
        np.testing.assert_array_equal(_load(store.get(object_id)), array)
        assert store.used_bytes() <= 3.5 * MB
    assert target.calls["read_into"] >= 3
    # Each restore removed its spilled copy; what is spilled now was spilled to make room.
    assert store.spilled() == target.usage()
    assert len(target.names()) + len(store.object_ids()) == len(arrays)
    for object_id, array in arrays.items():  # and again, in the other order
        np.testing.assert_array_equal(_load(store.get(object_id)), array)


def test_deleting_a_spilled_object_deletes_it_from_the_target(make_store, tmp_path):
    target = BucketTarget(tmp_path / "bucket")
    store = make_store(target, capacity_bytes=2 * MB)
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)  # spills a
    assert target.names() == {b"a".hex()}

    assert store.delete(b"a")
    assert target.names() == set()
    assert store.spilled() == (0, 0)
    assert not store.contains(b"a") and store.get(b"a") is None
    assert not store.delete(b"a")
    assert bytes(store.get(b"b").inband) == b"y" * 1_500_000  # type: ignore[union-attr]


def test_destroy_destroys_the_target(make_store, tmp_path):
    target = BucketTarget(tmp_path / "bucket")
    store = make_store(target, capacity_bytes=2 * MB)
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)
    store.destroy()
    assert target.calls["destroy"] == 1
    assert not (tmp_path / "bucket").exists()


def test_a_failing_target_fails_the_put_and_loses_nothing(make_store, tmp_path):
    target = UnreachableTarget(tmp_path / "bucket")
    store = make_store(target, capacity_bytes=2 * MB)
    store.put(b"a", b"", b"x" * 1_500_000)

    with pytest.raises(ConnectionError, match="unreachable") as caught:
        store.put(b"b", b"", b"y" * 1_500_000)
    assert any(target.description in note for note in caught.value.__notes__)
    assert bytes(store.get(b"a").inband) == b"x" * 1_500_000  # type: ignore[union-attr]
    assert not store.contains(b"b")
    assert store.spilled() == (0, 0)


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_bad_spilled_copy_is_reported_and_never_restored(make_store, tmp_path, damage):
    target = BucketTarget(tmp_path / "bucket")
    store = make_store(target, capacity_bytes=2 * MB)
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)
    spilled = target._key(b"a".hex())
    good = spilled.read_bytes()
    spilled.write_bytes(good[:-10] if damage == "truncate" else b"garbage!" + good[8:])

    with pytest.raises(CorruptObjectError, match="spilled copy of object 61 in the test bucket"):
        store.get(b"a")
    assert b"a".hex() in target.names()  # left where it was (b was spilled to make room)
    assert b"a" not in store.object_ids()
    spilled.write_bytes(good)  # repaired: it reads back
    assert bytes(store.get(b"a").inband) == b"x" * 1_500_000  # type: ignore[union-attr]


def test_spill_dir_and_spill_target_exclude_each_other(tmp_path):
    target = BucketTarget(tmp_path / "bucket")
    with pytest.raises(ValueError, match="either spill_dir or spill_target"):
        ObjectStore(tmp_path / "store", spill_dir=tmp_path / "spill", spill_target=target)
    with pytest.raises(ValueError, match="either spill_dir or spill_target"):
        MemoryStore(spill_dir=tmp_path / "spill", spill_target=target)


def test_something_that_is_not_a_target_is_refused_with_what_it_lacks(tmp_path):
    class Half:
        description = "half a target"

        def write(self, name: str, source: BinaryIO, size: int) -> None:
            pass

    with pytest.raises(TypeError, match="lacks read_into, size, delete"):
        ObjectStore(tmp_path / "store", spill_target=Half())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SpillTarget"):
        MemoryStore(spill_target=Half())  # type: ignore[arg-type]
    assert isinstance(BucketTarget(tmp_path), SpillTarget)


def test_spill_dir_is_short_for_a_directory_target(tmp_path):
    store = ObjectStore(tmp_path / "store", spill_dir=tmp_path / "spill")
    assert isinstance(store.spill_target, DirectorySpillTarget)
    assert store.spill_target.path == store.spill_dir == tmp_path / "spill"
    memory = MemoryStore(spill_dir=tmp_path / "mspill")
    assert isinstance(memory.spill_target, DirectorySpillTarget)
    assert memory.spill_dir == tmp_path / "mspill"
    custom = ObjectStore(tmp_path / "other", spill_target=BucketTarget(tmp_path / "bucket"))
    assert custom.spill_dir is None
    assert ObjectStore(tmp_path / "off").spill_target is None


def _restore_in_another_process(store_path: str, bucket: str, object_id: bytes, results) -> None:
    store = ObjectStore(store_path, capacity_bytes=2 * MB, spill_target=BucketTarget(pathlib.Path(bucket)))
    stored = store.get(object_id)
    results.put(None if stored is None else bytes(stored.inband))


def test_another_process_of_the_node_restores_what_one_spilled(tmp_path):
    bucket = tmp_path / "bucket"
    store = ObjectStore(tmp_path / "store", capacity_bytes=2 * MB, spill_target=BucketTarget(bucket))
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)  # spills a

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(
        target=_restore_in_another_process, args=(str(store.path), str(bucket), b"a", results)
    )
    proc.start()
    restored = results.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert restored == b"x" * 1_500_000
    # It made room by spilling b, which this process now reads back in turn.
    assert BucketTarget(bucket).names() == {b"b".hex()}
    assert bytes(store.get(b"b").inband) == b"y" * 1_500_000  # type: ignore[union-attr]


# ------------------------------------------------------------------ the directory target


def test_the_directory_target_keeps_the_spill_dir_layout(tmp_path):
    store = ObjectStore(tmp_path / "store", capacity_bytes=2 * MB, spill_dir=tmp_path / "spill")
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)
    assert os.listdir(tmp_path / "spill") == [b"a".hex()]  # one file per object, by its hex
    assert (tmp_path / "spill" / b"a".hex()).stat().st_size == store.size_of(b"a")


@pytest.mark.parametrize("source_kind", ["file", "bytesio", "reader"])
@pytest.mark.parametrize("dest_kind", ["file", "bytesio", "writer"])
def test_the_directory_target_copies_from_and_into_any_file_object(tmp_path, source_kind, dest_kind):
    data = os.urandom(3 * 1024 * 1024 + 17)
    target = DirectorySpillTarget(tmp_path / "spill")
    origin = tmp_path / "origin"
    origin.write_bytes(data)
    sources = {
        "file": lambda: open(origin, "rb", buffering=0),  # noqa: SIM115
        "bytesio": lambda: io.BytesIO(data),
        "reader": lambda: io.BufferedReader(io.BytesIO(data)),  # no fileno, no getbuffer
    }
    with sources[source_kind]() as source:
        target.write("ab", source, len(data))
    assert (tmp_path / "spill" / "ab").read_bytes() == data
    assert target.size("ab") == len(data) and target.usage() == (1, len(data))

    copy = tmp_path / "copy"
    dests = {
        "file": lambda: open(copy, "wb", buffering=0),  # noqa: SIM115
        "bytesio": lambda: io.BytesIO(),
        "writer": lambda: io.BufferedWriter(io.BytesIO()),
    }
    with dests[dest_kind]() as dest:
        assert target.read_into("ab", dest)
        if dest_kind == "file":
            dest.close()
            received = copy.read_bytes()
        else:
            dest.flush()
            raw = dest if dest_kind == "bytesio" else dest.raw
            received = raw.getvalue()
    assert received == data
    assert not target.read_into("cd", io.BytesIO())
    assert target.delete("ab") and not target.delete("ab")
    assert target.size("ab") is None and target.usage() == (0, 0)


def test_a_failed_directory_write_leaves_nothing(tmp_path):
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[override]
            raise OSError("the source broke")

    target = DirectorySpillTarget(tmp_path / "spill")
    with pytest.raises(OSError, match="broke"):
        target.write("ab", Broken(), 10)  # type: ignore[arg-type]
    assert os.listdir(tmp_path / "spill") == []


def test_the_directory_target_removes_partial_writes_of_dead_processes(tmp_path):
    target = DirectorySpillTarget(tmp_path / "spill")
    target.write("ab", io.BytesIO(b"kept"), 4)
    (tmp_path / "spill" / ".tmp-cd-999999999-00000000").write_bytes(b"partial")
    (tmp_path / "spill" / f".tmp-ef-{os.getpid()}-00000000").write_bytes(b"being written")
    assert target.usage() == (1, 4)  # partial writes are not objects
    assert target.remove_stale_temp_files() == 1
    assert sorted(os.listdir(tmp_path / "spill")) == [f".tmp-ef-{os.getpid()}-00000000", "ab"]
    target.destroy()
    target.destroy()
    assert not (tmp_path / "spill").exists()
    assert target.usage() == (0, 0) and target.remove_stale_temp_files() == 0


def test_a_spill_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "spill").write_bytes(b"")
    with pytest.raises(StoreError, match="a file with that name exists"):
        DirectorySpillTarget(tmp_path / "spill")


# ------------------------------------------------------------------ across processes


class WitnessTarget(BucketTarget):
    """Notes, for each delete, whether the object was back in the store at that moment."""

    def __init__(self, root: pathlib.Path, store_path: pathlib.Path) -> None:
        super().__init__(root)
        self.store_path = store_path
        self.visible_at_delete: list[bool] = []

    def delete(self, name: str) -> bool:
        self.visible_at_delete.append((self.store_path / name).exists())
        return super().delete(name)


def test_a_restore_removes_the_spilled_copy_before_the_object_reappears(tmp_path):
    # Once the object is back, another process may spill it again at once: a delete of the
    # spilled copy after that would drop the new one.
    target = WitnessTarget(tmp_path / "bucket", tmp_path / "store")
    store = ObjectStore(tmp_path / "store", capacity_bytes=2 * MB, spill_target=target)
    store.put(b"a", b"", b"x" * 1_500_000)
    store.put(b"b", b"", b"y" * 1_500_000)  # spills a
    assert bytes(store.get(b"a").inband) == b"x" * 1_500_000  # type: ignore[union-attr]
    assert target.visible_at_delete == [False]
    assert target.names() == {b"b".hex()}


def test_a_restore_that_died_before_publishing_is_finished(tmp_path):
    target = BucketTarget(tmp_path / "bucket")
    store = ObjectStore(tmp_path / "store", spill_target=target)
    store.put(b"a", b"", b"restored when its process died")
    with open(store.path / b"a".hex(), "rb") as spilled:
        target.write(b"a".hex(), spilled, store.size_of(b"a") or 0)  # its spilled copy, still there
    os.rename(store.path / b"a".hex(), store.path / f".restoring-{b'a'.hex()}-999999999-00000000")

    assert store.remove_stale_temp_files() == 1
    assert os.listdir(store.path) == [b"a".hex()]
    assert target.names() == set()
    assert bytes(store.get(b"a").inband) == b"restored when its process died"  # type: ignore[union-attr]


def _read_all_many_times(store_path: str, bucket: str, count: int, rounds: int, seed: int, results) -> None:
    """Read every object in a random order, ``rounds`` times; report what went wrong."""
    import random

    store = ObjectStore(store_path, capacity_bytes=int(3.5 * MB), spill_target=BucketTarget(pathlib.Path(bucket)))
    rng = random.Random(seed)
    problems = []
    try:
        for _ in range(rounds):
            order = list(range(count))
            rng.shuffle(order)
            for i in order:
                stored = store.get(b"obj-%d" % i)
                if stored is None:
                    problems.append(f"obj-{i} missing")
                    continue
                loaded = _load(stored)
                if not (loaded.min() == loaded.max() == i):  # type: ignore[attr-defined]
                    problems.append(f"obj-{i} has wrong contents")
                del stored, loaded
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    results.put(problems)


def test_processes_that_spill_and_restore_the_same_objects_lose_nothing(tmp_path):
    bucket = tmp_path / "bucket"
    store = ObjectStore(tmp_path / "store", capacity_bytes=int(3.5 * MB), spill_target=BucketTarget(bucket))
    arrays = _arrays(8)  # 8 MB through a 3.5 MB store: most are spilled at any moment
    for object_id, array in arrays.items():
        store.put(object_id, b"", *_parts(array))

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_read_all_many_times,
                    args=(str(store.path), str(bucket), len(arrays), 6, seed, results))
        for seed in range(3)
    ]
    for proc in procs:
        proc.start()
    problems = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert problems == [[], [], []]
    # Every object is still somewhere: in the store or in the target. (Rarely in both: two
    # processes restored it at once, and the slower one's copy came back while the object was
    # being spilled again. A spare spilled copy is harmless; delete removes both.)
    in_store = {object_id.hex() for object_id in store.object_ids()}
    assert in_store | BucketTarget(bucket).names() == {object_id.hex() for object_id in arrays}
    for object_id, array in arrays.items():
        np.testing.assert_array_equal(_load(store.get(object_id)), array)
