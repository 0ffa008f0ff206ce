"""Tests for both object stores (cluster_store.ObjectStore and MemoryStore), on real files, no mocks.

Tests that take the ``store`` or ``make_store`` fixture run against both kinds;
tests that build an ``ObjectStore`` themselves are about files shared between
processes and apply to it alone.
"""

from __future__ import annotations

import errno
import gc
import mmap
import multiprocessing
import os
import pathlib
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cluster_store import (
    MemoryStore,
    ObjectStore,
    RawWriter,
    StoredObject,
    default_store_root,
)
from cluster_store.errors import CorruptObjectError, ObjectStoreFullError, StoreError

Store = ObjectStore | MemoryStore
MakeStore = Callable[..., Store]


@pytest.fixture(params=["shared", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> MakeStore:
    """Build a store of the parametrized kind: ``make_store(capacity_bytes=..., spill=True)``."""

    def make(*, capacity_bytes: int | None = None, spill: bool = False, name: str = "store") -> Store:
        spill_dir = tmp_path / f"{name}-spill" if spill else None
        if request.param == "shared":
            return ObjectStore(tmp_path / name, capacity_bytes=capacity_bytes, spill_dir=spill_dir)
        return MemoryStore(capacity_bytes=capacity_bytes, spill_dir=spill_dir)

    return make


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


@pytest.fixture
def shm_store(tmp_path: pathlib.Path) -> ObjectStore:
    """A shared store only, for tests about its files."""
    return ObjectStore(tmp_path / "store")


def _dump(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return inband, buffers


def _load(stored: StoredObject) -> object:
    return pickle.loads(stored.inband, buffers=stored.buffers)


def _files(store: Store) -> list[str]:
    """What the store holds, partial writes included: its directory's files, or the
    in-memory objects plus a marker for room still reserved by unfinished writers."""
    if isinstance(store, MemoryStore):
        reserved = [f"<{store._reserved} bytes reserved>"] if store._reserved else []
        return sorted(oid.hex() for oid in store.object_ids()) + reserved
    return sorted(name for name in os.listdir(store.path) if name != ".free")


def _backing(view: memoryview) -> type:
    """The type of memory a zero-copy view points into: mmap (shared) or bytearray (in-process)."""
    return type(view.obj)


def _expected_backing(store: Store) -> type:
    """For objects under 1 MiB (larger in-process ones live in private mappings)."""
    return mmap.mmap if store.shared else bytearray


# ---------------------------------------------------------------- round trips


def test_round_trip_parts(store: Store) -> None:
    buffers = [b"a" * 10, bytearray(b"\x01\x02\x03"), memoryview(b"x" * 1000), b""]
    size = store.put(b"obj-1", b"meta", b"inband-bytes", buffers)

    stored = store.get(b"obj-1")
    assert stored is not None
    assert stored.object_id == b"obj-1"
    assert stored.metadata == b"meta"
    assert bytes(stored.inband) == b"inband-bytes"
    assert [bytes(b) for b in stored.buffers] == [bytes(b) for b in buffers]
    assert stored.size == size == store.size_of(b"obj-1")
    assert stored.inband.readonly
    assert all(view.readonly for view in stored.buffers)
    # Buffers start at 64-byte aligned offsets of the (page aligned) memory.
    assert _backing(stored.buffers[0]) is _expected_backing(store)
    for view in stored.buffers:
        address = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
        assert address % 64 == 0
    assert store.contains(b"obj-1")
    assert b"obj-1" in store


def test_empty_object_and_no_buffers(store: Store) -> None:
    size = store.put(b"\x00", b"", b"")
    stored = store.get(b"\x00")
    assert stored is not None
    assert (stored.metadata, bytes(stored.inband), stored.buffers) == (b"", b"", [])
    assert stored.size == size > 0

    store.put(b"\x01", b"", b"", [b"", b""])
    stored = store.get(b"\x01")
    assert stored is not None
    assert [bytes(b) for b in stored.buffers] == [b"", b""]


def test_missing_object(store: Store) -> None:
    assert store.get(b"nope") is None
    assert store.open_raw(b"nope") is None
    assert store.size_of(b"nope") is None
    assert not store.contains(b"nope")
    assert store.delete(b"nope") is False


def test_numpy_array_is_zero_copy_and_read_only(store: Store) -> None:
    array = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    inband, buffers = _dump(array)
    assert len(buffers) == 1
    store.put(b"arr", b"", inband, buffers)

    stored = store.get(b"arr")
    assert stored is not None
    result = _load(stored)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable is False
    with pytest.raises(ValueError):
        result[0, 0] = 1.0
    # The array's memory is the store's own (the mapped file, or the object's bytearray).
    base = result
    while not isinstance(base, memoryview):
        base = base.base
    assert _backing(base) is _expected_backing(store)
    assert np.shares_memory(result, np.frombuffer(stored.buffers[0], dtype=np.float64))


def test_fortran_order_array(store: Store) -> None:
    array = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    store.put(b"f", b"", *_dump(array))
    stored = store.get(b"f")
    assert stored is not None
    result = _load(stored)
    np.testing.assert_array_equal(result, array)
    assert result.flags.f_contiguous


def test_non_contiguous_buffer_is_rejected(store: Store) -> None:
    strided = memoryview(np.arange(10, dtype=np.int64)[::2])
    with pytest.raises(ValueError, match="contiguous"):
        store.put(b"s", b"", b"", [strided])
    assert _files(store) == []


def test_put_is_idempotent(store: Store) -> None:
    size = store.put(b"id", b"m1", b"first", [b"1" * 100])
    assert store.put(b"id", b"m2", b"second, longer", [b"2" * 5000]) == size
    stored = store.get(b"id")
    assert stored is not None
    assert bytes(stored.inband) == b"first"
    assert _files(store) == [b"id".hex()]


def test_invalid_object_ids(store: Store) -> None:
    with pytest.raises(ValueError):
        store.put(b"", b"", b"")
    with pytest.raises(ValueError):
        store.get(b"x" * 65)
    with pytest.raises(TypeError):
        store.contains("abc")  # type: ignore[arg-type]
    store.put(b"x" * 64, b"", b"ok")
    assert store.object_ids() == [b"x" * 64]


# ---------------------------------------------------------------- deletion


def test_delete_while_view_is_held(store: Store) -> None:
    array = np.full(50_000, 7, dtype=np.int16)
    store.put(b"d", b"meta", *_dump(array))
    stored = store.get(b"d")
    assert stored is not None
    result = _load(stored)
    raw = store.open_raw(b"d")

    assert store.delete(b"d") is True
    assert store.delete(b"d") is False
    assert not store.contains(b"d")
    assert store.get(b"d") is None
    del stored
    gc.collect()
    # The unlinked file's pages stay mapped while views exist.
    np.testing.assert_array_equal(result, array)
    assert raw is not None and raw[:8] == b"CLUSTOBJ"
    # The id can be stored again afterwards.
    store.put(b"d", b"", b"again")
    again = store.get(b"d")
    assert again is not None and bytes(again.inband) == b"again"


def test_destroy(make_store: MakeStore, tmp_path: pathlib.Path) -> None:
    store = make_store(spill=True)
    store.put(b"a", b"", b"1")
    store.destroy()
    assert store.get(b"a") is None
    if store.shared:
        assert not (tmp_path / "store").exists()
    assert not (tmp_path / "store-spill").exists()
    store.destroy()  # idempotent
    with pytest.raises(StoreError, match="destroyed"):
        store.put(b"b", b"", b"2")


def test_open_existing_without_create(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StoreError, match="create=True"):
        ObjectStore(tmp_path / "missing", create=False)
    ObjectStore(tmp_path / "s").put(b"k", b"", b"v")
    other = ObjectStore(tmp_path / "s", create=False)
    assert other.object_ids() == [b"k"]
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700


def test_default_store_root() -> None:
    root = default_store_root()
    assert root.is_dir()
    assert os.access(root, os.W_OK)


# ---------------------------------------------------------------- capacity


def test_capacity_error_leaves_no_partial_file(make_store: MakeStore) -> None:
    store = make_store(capacity_bytes=10_000)
    first = store.put(b"a", b"", b"", [b"x" * 6000])
    assert store.used_bytes() == first

    with pytest.raises(ObjectStoreFullError) as info:
        store.put(b"b", b"", b"", [b"y" * 6000])
    message = str(info.value)
    assert "10000" in message and str(first) in message and "capacity" in message
    assert info.value.used_bytes == first
    assert info.value.capacity_bytes == 10_000
    assert info.value.object_id == b"b" and info.value.object_size > 6000
    assert _files(store) == [b"a".hex()]

    with pytest.raises(ObjectStoreFullError):
        store.create_raw(b"c", 6000)
    assert _files(store) == [b"a".hex()]

    store.delete(b"a")
    assert store.used_bytes() == 0
    store.put(b"b", b"", b"", [b"y" * 6000])
    assert store.object_ids() == [b"b"]


def _put_beyond_file_size_limit(path: str, results) -> None:  # type: ignore[no-untyped-def]
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    store = ObjectStore(path)
    try:
        store.put(b"big", b"", b"", [bytes(2 << 20)])
    except OSError as exc:
        results.put(exc.errno)
    else:
        results.put(None)


def test_failed_write_removes_temp_file(tmp_path: pathlib.Path) -> None:
    """A write that fails half-way (here: EFBIG after 1 MiB) leaves nothing behind."""
    path = str(tmp_path / "limited")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_put_beyond_file_size_limit, args=(path, results))
    proc.start()
    assert results.get(timeout=60) == errno.EFBIG
    proc.join(timeout=60)
    assert os.listdir(path) == []


# ---------------------------------------------------------------- raw transfer


@pytest.mark.parametrize("source_kind", [ObjectStore, MemoryStore])
@pytest.mark.parametrize("target_kind", [ObjectStore, MemoryStore])
def test_transfer_between_stores_chunkwise(
    tmp_path: pathlib.Path, source_kind: type, target_kind: type
) -> None:
    source = ObjectStore(tmp_path / "node-a") if source_kind is ObjectStore else MemoryStore()
    target = ObjectStore(tmp_path / "node-b") if target_kind is ObjectStore else MemoryStore()
    array = np.random.default_rng(0).random(40_000)
    source.put(b"obj", b"meta!", *_dump(array))

    raw = source.open_raw(b"obj")
    assert raw is not None and raw.readonly
    size = len(raw)
    with target.create_raw(b"obj", size) as writer:
        assert isinstance(writer, RawWriter)
        assert len(writer.view) == size and not writer.view.readonly
        assert not target.contains(b"obj")  # invisible until sealed
        chunk = 4096
        for offset in range(0, size, chunk):
            piece = raw[offset : offset + chunk]
            writer.view[offset : offset + len(piece)] = piece
        writer.seal()
    assert writer.sealed

    stored = target.get(b"obj")
    assert stored is not None
    assert stored.metadata == b"meta!"
    np.testing.assert_array_equal(_load(stored), array)
    assert _files(target) == [b"obj".hex()]

    # Receiving an object that already exists discards the copy.
    with target.create_raw(b"obj", size) as writer:
        writer.view[:] = raw
        writer.seal()
    assert _files(target) == [b"obj".hex()]


def test_raw_writer_abort_and_garbage(store: Store) -> None:
    with pytest.raises(RuntimeError), store.create_raw(b"r", 1000):
        raise RuntimeError("connection lost")
    assert _files(store) == []

    with store.create_raw(b"r", 1000):
        pass  # never sealed -> discarded
    assert _files(store) == []

    writer = store.create_raw(b"r", 1000)
    writer.view[:] = b"\xab" * 1000
    with pytest.raises(CorruptObjectError, match="valid object file"):
        writer.seal()
    assert _files(store) == []
    with pytest.raises(StoreError):
        writer.seal()

    writer = store.create_raw(b"r", 1000)
    del writer
    gc.collect()
    assert _files(store) == []

    with pytest.raises(ValueError):
        store.create_raw(b"r", 0)


def test_raw_header_size_mismatch(make_store: MakeStore) -> None:
    source = make_store(name="a")
    target = make_store(name="b")
    source.put(b"o", b"", b"payload")
    raw = source.open_raw(b"o")
    assert raw is not None
    with target.create_raw(b"o", len(raw) + 64) as writer:
        writer.view[: len(raw)] = raw
        with pytest.raises(CorruptObjectError):
            writer.seal()
    assert _files(target) == []


# ---------------------------------------------------------------- corruption


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"garbage" * 20, id="garbage"),
        pytest.param(lambda data: data[:-1], id="truncated"),
        pytest.param(lambda data: data[:8] + struct.pack("<H", 99) + data[10:], id="version"),
        pytest.param(lambda data: data + b"\x00" * 64, id="trailing"),
    ],
)
def test_corrupt_file(shm_store: ObjectStore, mangle) -> None:  # type: ignore[no-untyped-def]
    shm_store.put(b"c", b"m", b"inband", [b"buffer" * 10])
    path = shm_store.path / b"c".hex()
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(CorruptObjectError) as info:
        shm_store.get(b"c")
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    with pytest.raises(CorruptObjectError):
        shm_store.open_raw(b"c")


# ---------------------------------------------------------------- listing


def test_listing_ignores_temp_files(shm_store: ObjectStore) -> None:
    a = shm_store.put(b"a", b"", b"1")
    b = shm_store.put(b"b", b"", b"22", [b"3" * 100])
    (shm_store.path / f".tmp-{b'c'.hex()}-{os.getpid()}-deadbeef").write_bytes(b"x" * 5000)
    (shm_store.path / "not-an-object.txt").write_bytes(b"x")
    pending = shm_store.create_raw(b"d", 4000)  # an in-flight transfer
    assert sorted(shm_store.object_ids()) == [b"a", b"b"]
    assert shm_store.used_bytes() == a + b
    pending.abort()
    shm_store.delete(b"a")
    assert shm_store.used_bytes() == b


def test_remove_stale_temp_files(shm_store: ObjectStore) -> None:
    dead = shm_store.path / ".tmp-aa-999999999-00000000"
    alive = shm_store.path / f".tmp-aa-{os.getpid()}-00000000"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert shm_store.remove_stale_temp_files() == 1
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------- concurrency


def _concurrent_put(path: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    store = ObjectStore(path)
    payload = np.arange(1 << 20, dtype=np.int64)  # 8 MiB
    inband, buffers = _dump(payload)
    barrier.wait()
    results.put(store.put(b"shared", b"meta", inband, buffers))


def test_concurrent_put_from_two_processes(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_put, args=(path, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    sizes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    store = ObjectStore(path)
    assert sizes[0] == sizes[1] == store.size_of(b"shared")
    assert _files(store) == [b"shared".hex()]
    stored = store.get(b"shared")
    assert stored is not None and stored.metadata == b"meta"
    np.testing.assert_array_equal(_load(stored), np.arange(1 << 20, dtype=np.int64))


# ---------------------------------------------------------------------------- spilling


def _array_parts(value: object) -> tuple[bytes, list]:
    buffers: list = []
    inband = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return inband, buffers


def test_a_full_store_spills_least_recently_used_objects_and_reads_them_back(make_store):
    store = make_store(capacity_bytes=3_500_000, spill=True)
    arrays = {bytes([i]) * 4: np.full(125_000, i, dtype=np.float64) for i in range(6)}  # 1 MB each
    for oid, array in arrays.items():
        store.put(oid, b"", *_array_parts(array))
    spilled_count, spilled_bytes = store.spilled()
    assert spilled_count == 3 and spilled_bytes > 3_000_000
    assert store.used_bytes() <= 3_500_000
    assert sorted(store.object_ids()) == sorted(list(arrays)[3:])  # the oldest went to disk
    for oid, array in arrays.items():  # every one reads back intact, spilled or not
        obj = store.get(oid)
        assert obj is not None
        assert np.array_equal(pickle.loads(obj.inband, buffers=obj.buffers), array)
        assert store.used_bytes() <= 3_500_000
    assert store.contains(bytes([0]) * 4) and store.size_of(bytes([0]) * 4)


def test_without_a_spill_dir_a_full_store_refuses_and_says_spilling_is_off(make_store):
    store = make_store(capacity_bytes=2_000_000)
    store.put(b"a" * 4, b"", b"x" * 1_500_000)
    with pytest.raises(ObjectStoreFullError, match="spilling is off"):
        store.put(b"b" * 4, b"", b"y" * 1_000_000)


def test_deleting_a_spilled_object_removes_it_from_disk(make_store):
    store = make_store(capacity_bytes=2_000_000, spill=True)
    store.put(b"a" * 4, b"", b"x" * 1_500_000)
    store.put(b"b" * 4, b"", b"y" * 1_500_000)  # spills a
    assert store.spilled()[0] == 1
    assert store.delete(b"a" * 4)
    assert store.spilled() == (0, 0)
    assert not store.contains(b"a" * 4)


# ---------------------------------------------------------------- secondary copies

MB = 1_000_000


def _raw_object(value: object) -> bytes:
    """The bytes of a sealed object file holding ``value``, as a transfer would send them."""
    source = MemoryStore()
    source.put(b"raw", b"", *_dump(value))
    raw = source.open_raw(b"raw")
    assert raw is not None
    return bytes(raw)


def _receive(store: Store, object_id: bytes, raw: bytes, *, secondary: bool = True) -> None:
    with store.create_raw(object_id, len(raw), secondary=secondary) as writer:
        writer.view[:] = raw
        writer.seal()


def _age(store: Store, object_ids: list[bytes]) -> None:
    """Make the objects look used long ago, oldest first (the shared store orders by mtime;
    the in-process one by use, which the order of writes already gives)."""
    if isinstance(store, ObjectStore):
        now = os.stat(store.path).st_mtime_ns
        for age, object_id in enumerate(reversed(object_ids), start=1):
            then = now - 60_000_000_000 * age
            os.utime(store.path / object_id.hex(), ns=(then, then))


def test_secondary_copies_are_marked_and_counted(store: Store) -> None:
    primary = store.put(b"p", b"", *_dump(np.zeros(1000)))
    raw = _raw_object(np.ones(2000))
    _receive(store, b"s", raw)
    assert store.is_secondary(b"s") and not store.is_secondary(b"p")
    assert not store.is_secondary(b"missing")
    stored = store.get(b"s")
    assert stored is not None
    np.testing.assert_array_equal(_load(stored), np.ones(2000))
    assert store.usage() == (2, primary + len(raw))
    stats = store.stats()
    assert (stats.objects, stats.bytes) == (2, primary + len(raw))
    assert (stats.secondary_objects, stats.secondary_bytes) == (1, len(raw))
    assert (stats.spilled_objects, stats.spilled_bytes) == (0, 0)
    assert store.delete(b"s") and not store.contains(b"s")
    assert store.stats().secondary_objects == 0


def test_a_primary_copy_replaces_a_secondary_one(store: Store) -> None:
    value = np.arange(5000)
    raw = _raw_object(value)
    _receive(store, b"x", raw)
    held = _load(store.get(b"x"))  # type: ignore[arg-type]
    # A put of the same object (say, recomputed here) makes it a primary copy.
    assert store.put(b"x", b"", *_dump(value)) == len(raw)
    assert not store.is_secondary(b"x")
    np.testing.assert_array_equal(held, value)  # a reader of the old copy keeps its bytes
    # A secondary copy received over a primary one is discarded.
    _receive(store, b"x", raw)
    assert not store.is_secondary(b"x")
    # A primary copy received over a secondary one replaces it.
    _receive(store, b"y", raw)
    _receive(store, b"y", raw, secondary=False)
    assert not store.is_secondary(b"y")
    np.testing.assert_array_equal(_load(store.get(b"y")), value)  # type: ignore[arg-type]
    assert store.stats().secondary_objects == 0
    assert sorted(store.object_ids()) == [b"x", b"y"]


def test_secondary_copies_are_dropped_before_any_primary_spills(make_store: MakeStore) -> None:
    store = make_store(capacity_bytes=int(5.5 * MB), spill=True)
    blocks = {name: np.full(MB // 8, index, dtype=np.float64) for index, name in enumerate(
        [b"p1", b"p2", b"s1", b"s2", b"s3", b"p3", b"p4", b"p5", b"p6"])}
    for name in [b"p1", b"p2"]:
        store.put(name, b"", *_dump(blocks[name]))
    for name in [b"s1", b"s2", b"s3"]:
        _receive(store, name, _raw_object(blocks[name]))
    _age(store, [b"p1", b"p2", b"s1", b"s2", b"s3"])
    held = _load(store.get(b"s1"))  # type: ignore[arg-type]  # s1 is now the most recently used
    store.put(b"p3", b"", *_dump(blocks[b"p3"]))
    assert not store.contains(b"s2")  # the least recently used secondary copy went first
    assert store.contains(b"s1") and store.contains(b"s3")
    assert store.spilled() == (0, 0)
    store.put(b"p4", b"", *_dump(blocks[b"p4"]))
    store.put(b"p5", b"", *_dump(blocks[b"p5"]))
    assert not store.contains(b"s3") and not store.contains(b"s1")  # dropped, never spilled
    assert store.spilled() == (0, 0)
    np.testing.assert_array_equal(held, blocks[b"s1"])  # a reader keeps a dropped copy's bytes
    store.put(b"p6", b"", *_dump(blocks[b"p6"]))  # no secondary copy left: now a primary spills
    assert store.spilled()[0] == 1
    assert store.stats().secondary_objects == 0
    for name in [b"p1", b"p2", b"p3", b"p4", b"p5", b"p6"]:
        np.testing.assert_array_equal(_load(store.get(name)), blocks[name])  # type: ignore[arg-type]


def test_secondary_copies_make_room_even_without_spilling(make_store: MakeStore) -> None:
    store = make_store(capacity_bytes=int(2.5 * MB))
    store.put(b"p1", b"", *_dump(np.zeros(MB // 8)))
    _receive(store, b"s1", _raw_object(np.ones(MB // 8)))
    store.put(b"p2", b"", *_dump(np.ones(MB // 8) * 2))
    assert not store.contains(b"s1") and store.contains(b"p1")
    with pytest.raises(ObjectStoreFullError, match="spilling is off"):
        store.put(b"p3", b"", *_dump(np.ones(MB // 8) * 3))


# ---------------------------------------------------------------- recycling freed files

MiB = 1 << 20


def _block(value: int, size: int = 2 * MiB) -> tuple[bytes, list[pickle.PickleBuffer]]:
    return _dump(np.full(size, value, dtype=np.uint8))


def _inode(store: ObjectStore, object_id: bytes) -> int:
    return os.stat(store.path / object_id.hex()).st_ino


def _pooled(store: ObjectStore) -> list[str]:
    with_pool = store.path / ".free"
    return sorted(os.listdir(with_pool)) if with_pool.exists() else []


def test_deleted_large_files_are_reused_by_later_puts(shm_store: ObjectStore) -> None:
    store = shm_store
    size = store.put(b"a", b"", *_block(1))
    inode = _inode(store, b"a")
    assert store.delete(b"a")
    assert len(_pooled(store)) == 1
    assert (store.stats().pooled_files, store.stats().pooled_bytes) == (1, size)
    assert store.used_bytes() == 0 and not store.contains(b"a")

    store.put(b"b", b"", *_block(2))
    assert _inode(store, b"b") == inode  # the same pages, rewritten
    assert _pooled(store) == []
    np.testing.assert_array_equal(_load(store.get(b"b")), np.full(2 * MiB, 2, np.uint8))  # type: ignore[arg-type]

    # A smaller object (down to half the file) reuses it too; the file shrinks to fit.
    store.delete(b"b")
    smaller = store.put(b"c", b"", *_block(3, int(1.5 * MiB)))
    assert _inode(store, b"c") == inode and store.size_of(b"c") == smaller
    np.testing.assert_array_equal(_load(store.get(b"c")), np.full(int(1.5 * MiB), 3, np.uint8))  # type: ignore[arg-type]

    # Receiving a transfer reuses freed files as well.
    store.delete(b"c")
    raw = _raw_object(np.full(int(1.4 * MiB), 4, np.uint8))
    _receive(store, b"d", raw)
    assert _inode(store, b"d") == inode
    np.testing.assert_array_equal(_load(store.get(b"d")), np.full(int(1.4 * MiB), 4, np.uint8))  # type: ignore[arg-type]

    # Small objects are simply unlinked.
    store.put(b"small", b"", *_block(5, 1000))
    store.delete(b"small")
    assert _pooled(store) == []


def test_a_mapped_file_is_never_reused(shm_store: ObjectStore) -> None:
    store = shm_store
    store.put(b"a", b"", *_block(1))
    held_a = _load(store.get(b"a"))  # type: ignore[arg-type]
    store.delete(b"a")
    assert _pooled(store) == []  # a reader maps it: unlinked, not pooled

    # A reader may pin a file after delete looked at it: it then sits in the pool, mapped.
    size = store.put(b"c", b"", *_block(3))
    inode = _inode(store, b"c")
    held_c = _load(store.get(b"c"))  # type: ignore[arg-type]
    os.makedirs(store.path / ".free", exist_ok=True)
    os.rename(store.path / b"c".hex(), store.path / ".free" / f"{size}-0123456789ab")
    store.put(b"d", b"", *_block(4))
    assert _inode(store, b"d") != inode  # the writer saw the pin and took a fresh file
    assert _pooled(store) == []  # ... and let the mapped one go
    np.testing.assert_array_equal(held_a, np.full(2 * MiB, 1, np.uint8))
    np.testing.assert_array_equal(held_c, np.full(2 * MiB, 3, np.uint8))


def test_a_file_reused_between_a_readers_open_and_pin_is_not_read(
    shm_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cluster_store import store as store_module

    store = shm_store
    real_pin = store_module.pin
    race: dict[str, Any] = {}

    def pin_late(fd: int) -> None:
        # Between the reader's open and its pin, "a" is freed and its file is
        # reused for race["object"] (each object's bytes are all its first byte).
        if "then" in race:
            race.pop("then")()
        elif race:
            object_id = race.pop("object")
            inode = _inode(store, b"a")
            store.delete(b"a")
            store.put(object_id, b"", *_block(object_id[0]))
            assert _inode(store, object_id) == inode
        real_pin(fd)

    monkeypatch.setattr(store_module, "pin", pin_late)
    store.put(b"a", b"", *_block(ord("a")))
    race["object"] = b"b"
    assert store.get(b"a") is None  # "a" is gone, and the file now holds "b": not read as "a"

    # If "a" is stored again meanwhile, the reader gets that copy: in the reused file ...
    store.put(b"a", b"", *_block(ord("a")))
    race["object"] = b"a"
    stored = store.get(b"a")
    assert stored is not None
    np.testing.assert_array_equal(_load(stored), np.full(2 * MiB, ord("a"), np.uint8))
    del stored

    # ... or in another file, while the one the reader opened holds "c".
    def reuse_for_c_then_store_a_again() -> None:
        inode = _inode(store, b"a")
        store.delete(b"a")
        store.put(b"c", b"", *_block(ord("c")))
        assert _inode(store, b"c") == inode
        store.put(b"a", b"", *_block(ord("a")))

    race["then"] = reuse_for_c_then_store_a_again
    stored = store.get(b"a")
    assert stored is not None
    np.testing.assert_array_equal(_load(stored), np.full(2 * MiB, ord("a"), np.uint8))


def test_the_pool_is_bounded_and_dropped_first_when_room_is_needed(tmp_path: pathlib.Path) -> None:
    unbounded = ObjectStore(tmp_path / "unbounded")
    for index in range(6):
        unbounded.put(bytes([index]), b"", *_block(index, MiB + index * 1000))
    for index in range(6):
        unbounded.delete(bytes([index]))
    assert len(_pooled(unbounded)) == 4  # at most MAX_POOLED_FILES

    store = ObjectStore(tmp_path / "capped", capacity_bytes=12 * MiB, spill_dir=tmp_path / "spill")
    for index in range(3):  # the pool may hold a quarter of the capacity: one 2 MiB file
        store.put(bytes([index]), b"", *_block(index))
    for index in range(3):
        store.delete(bytes([index]))
    assert store.stats().pooled_files == 1
    pooled = store.stats().pooled_bytes
    # Fill the store with objects too small to reuse the pooled file: it counts as used.
    fill = 0
    while fill + pooled + MiB + 1000 <= 12 * MiB:
        fill += store.put(b"f%d" % fill, b"", *_block(9, MiB - 1000))
    assert store.stats().pooled_files == 1
    store.put(b"last", b"", *_block(9, MiB - 1000))
    assert store.stats().pooled_files == 0  # dropped instead of spilling an object
    assert store.spilled() == (0, 0)


def _hold_and_watch(path: str, object_ids, ready, stop, results) -> None:  # type: ignore[no-untyped-def]
    store = ObjectStore(path)
    held = {}
    for object_id in object_ids:
        stored = store.get(object_id)
        assert stored is not None
        held[object_id] = np.frombuffer(stored.buffers[0], dtype=np.uint8)
    expected = {object_id: int(array[0]) for object_id, array in held.items()}
    ready.set()
    changed = checks = 0
    while not stop.is_set():
        for object_id, array in held.items():
            if int(array.min()) != expected[object_id] or int(array.max()) != expected[object_id]:
                changed += 1
        checks += 1
    results.put((changed, checks))


def _put_and_delete_many(path: str, size: int, rounds: int, results) -> None:  # type: ignore[no-untyped-def]
    store = ObjectStore(path)
    inodes = []
    for index in range(rounds):
        object_id = b"w%d" % index
        store.put(object_id, b"", *_dump(np.full(size, index % 200 + 20, dtype=np.uint8)))
        inodes.append(os.stat(os.path.join(path, object_id.hex())).st_ino)
        store.delete(object_id)
    results.put(inodes)


def test_a_reader_in_another_process_keeps_its_bytes_while_files_are_reused(
    tmp_path: pathlib.Path,
) -> None:
    path = str(tmp_path / "shared")
    store = ObjectStore(path)
    size = 4 * MiB
    for object_id, value in [(b"a", 0xA1), (b"c", 0xC3)]:
        store.put(object_id, b"", *_dump(np.full(size, value, dtype=np.uint8)))
    held_inodes = {_inode(store, b"a"), _inode(store, b"c")}
    ctx = multiprocessing.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_hold_and_watch, args=(path, [b"a", b"c"], ready, stop, results))
    reader.start()
    try:
        assert ready.wait(timeout=60)
        store.delete(b"a")  # mapped by the reader: unlinked
        assert _pooled(store) == []
        # "c" lands in the pool while mapped, as when the reader pins it just after delete looked.
        file_size = store.size_of(b"c")
        os.makedirs(store.path / ".free", exist_ok=True)
        os.rename(store.path / b"c".hex(), store.path / ".free" / f"{file_size}-00000000000c")
        writer = ctx.Process(target=_put_and_delete_many, args=(path, size, 30, results))
        writer.start()
        inodes = results.get(timeout=120)
        writer.join(timeout=60)
        assert writer.exitcode == 0
    finally:
        stop.set()
    changed, checks = results.get(timeout=60)
    reader.join(timeout=60)
    assert reader.exitcode == 0
    assert changed == 0 and checks > 0
    assert not held_inodes & set(inodes)  # the mapped files were never rewritten
    assert len(set(inodes)) < len(inodes) // 2  # ... while the writer did reuse its own freed files


# ---------------------------------------------------------------- files of dead processes


def test_claims_of_dead_processes_are_cleaned_up(tmp_path: pathlib.Path) -> None:
    store = ObjectStore(tmp_path / "shm", spill_dir=tmp_path / "spill")
    store.put(b"a", b"", b"spilling when its process died")
    store.put(b"b", b"", b"evicting when its process died")
    os.rename(store.path / b"a".hex(), store.path / f".spilling-{b'a'.hex()}-999999999-00000000")
    os.rename(store.path / b"b".hex(), store.path / f".evicting-{b'b'.hex()}-999999999-00000000")
    (tmp_path / "spill" / f".tmp-{b'c'.hex()}-999999999-00000000").write_bytes(b"partial")
    assert store.remove_stale_temp_files() == 3
    stored = store.get(b"a")  # a spill that never landed is put back
    assert stored is not None and bytes(stored.inband) == b"spilling when its process died"
    assert not store.contains(b"b")  # an eviction is finished
    assert _files(store) == [b"a".hex()]
    assert os.listdir(tmp_path / "spill") == []


# ---------------------------------------------------------------- the in-process store


def test_memory_store_keeps_large_objects_aligned_in_private_mappings() -> None:
    store = MemoryStore()
    array = np.arange(MiB, dtype=np.float64)  # 8 MiB
    store.put(b"big", b"", *_dump(array))
    stored = store.get(b"big")
    assert stored is not None
    assert _backing(stored.buffers[0]) is mmap.mmap and stored.buffers[0].readonly
    result = _load(stored)
    np.testing.assert_array_equal(result, array)
    assert result.__array_interface__["data"][0] % 64 == 0  # type: ignore[union-attr]
    raw = store.open_raw(b"big")
    assert raw is not None
    with store.create_raw(b"copy", len(raw)) as writer:
        writer.view[:] = raw
        writer.seal()
    np.testing.assert_array_equal(_load(store.get(b"copy")), array)  # type: ignore[arg-type]
    store.delete(b"big")
    np.testing.assert_array_equal(result, array)  # a deleted object's views keep their memory


def test_only_the_shared_store_is_shared(tmp_path: pathlib.Path) -> None:
    assert ObjectStore.shared is True and ObjectStore(tmp_path / "s").shared is True
    assert MemoryStore.shared is False and MemoryStore().shared is False
    assert MemoryStore().remove_stale_temp_files() == 0


def test_memory_store_is_thread_safe(tmp_path: pathlib.Path) -> None:
    import random
    import threading

    store = MemoryStore(capacity_bytes=3 * MB, spill_dir=tmp_path / "spill")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for step in range(300):
                object_id = b"%d-%d" % (seed, rng.randrange(20))
                value = np.full(rng.choice([10, 1000, 60_000]), len(object_id), dtype=np.int64)
                action = rng.random()
                if action < 0.5:
                    store.put(object_id, b"", *_dump(value))
                elif action < 0.8:
                    stored = store.get(object_id)
                    if stored is not None:
                        loaded = _load(stored)
                        assert loaded.min() == loaded.max() == len(object_id)  # type: ignore[union-attr]
                else:
                    store.delete(object_id)
                if step % 50 == 0:
                    store.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store._reserved == 0
    assert store.used_bytes() == sum(store.size_of(oid) or 0 for oid in store.object_ids())
    assert store.used_bytes() <= 3 * MB
    spilled_count, _ = store.spilled()
    assert len(os.listdir(tmp_path / "spill")) == spilled_count


# ------------------------------------------------- deleting what another process moves


def test_deleting_an_object_another_process_is_spilling_returns_at_once(tmp_path: pathlib.Path) -> None:
    # delete runs on event loops (a node daemon's): it must not wait for the other process.
    import time

    store = ObjectStore(tmp_path / "store", spill_dir=tmp_path / "spill")
    oid = b"m" * 4
    store.put(oid, b"", b"x" * 10_000)
    name = oid.hex()
    # Another process claims it for spilling, as _spill_one does, and is slow to finish.
    claim = store.path / f".spilling-{name}-{os.getpid() + 1}-0a0b0c0d"
    os.rename(store.path / name, claim)

    began = time.monotonic()
    assert store.delete(oid)
    assert time.monotonic() - began < 1.0  # (it waited up to 5 s for the spill)

    # The spill lands, the claim goes: the delete finishes, removing the spilled copy.
    assert store.spill_target is not None
    with open(claim, "rb") as source:
        store.spill_target.write(name, source, os.fstat(source.fileno()).st_size)
    os.unlink(claim)
    deadline = time.monotonic() + 30
    while store.spilled() != (0, 0):
        assert time.monotonic() < deadline, "the spilled copy of the deleted object stayed"
        time.sleep(0.01)
    assert not store.contains(oid)
