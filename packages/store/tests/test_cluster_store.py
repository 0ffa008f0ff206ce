"""Tests for cluster_store.ObjectStore on real files (no mocks)."""

from __future__ import annotations

import errno
import gc
import mmap
import multiprocessing
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest
from cluster_store import (
    ObjectStore,
    RawWriter,
    StoredObject,
    default_store_root,
)
from cluster_store.errors import CorruptObjectError, ObjectStoreFullError, StoreError


@pytest.fixture
def store(tmp_path: pathlib.Path) -> ObjectStore:
    return ObjectStore(tmp_path / "store")


def _dump(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return inband, buffers


def _load(stored: StoredObject) -> object:
    return pickle.loads(stored.inband, buffers=stored.buffers)


def _files(store: ObjectStore) -> list[str]:
    return sorted(os.listdir(store.path))


# ---------------------------------------------------------------- round trips


def test_round_trip_parts(store: ObjectStore) -> None:
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
    # Buffers start at 64-byte aligned offsets of the (page aligned) mapping.
    base = stored.buffers[0].obj
    assert isinstance(base, mmap.mmap)
    for view in stored.buffers:
        address = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
        assert address % 64 == 0
    assert store.contains(b"obj-1")
    assert b"obj-1" in store


def test_empty_object_and_no_buffers(store: ObjectStore) -> None:
    size = store.put(b"\x00", b"", b"")
    stored = store.get(b"\x00")
    assert stored is not None
    assert (stored.metadata, bytes(stored.inband), stored.buffers) == (b"", b"", [])
    assert stored.size == size > 0

    store.put(b"\x01", b"", b"", [b"", b""])
    stored = store.get(b"\x01")
    assert stored is not None
    assert [bytes(b) for b in stored.buffers] == [b"", b""]


def test_missing_object(store: ObjectStore) -> None:
    assert store.get(b"nope") is None
    assert store.open_raw(b"nope") is None
    assert store.size_of(b"nope") is None
    assert not store.contains(b"nope")
    assert store.delete(b"nope") is False


def test_numpy_array_is_zero_copy_and_read_only(store: ObjectStore) -> None:
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
    # The array's memory is the mapped file itself.
    base = result
    while not isinstance(base, memoryview):
        base = base.base
    assert isinstance(base.obj, mmap.mmap)
    assert np.shares_memory(result, np.frombuffer(stored.buffers[0], dtype=np.float64))


def test_fortran_order_array(store: ObjectStore) -> None:
    array = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    store.put(b"f", b"", *_dump(array))
    stored = store.get(b"f")
    assert stored is not None
    result = _load(stored)
    np.testing.assert_array_equal(result, array)
    assert result.flags.f_contiguous


def test_non_contiguous_buffer_is_rejected(store: ObjectStore) -> None:
    strided = memoryview(np.arange(10, dtype=np.int64)[::2])
    with pytest.raises(ValueError, match="contiguous"):
        store.put(b"s", b"", b"", [strided])
    assert _files(store) == []


def test_put_is_idempotent(store: ObjectStore) -> None:
    size = store.put(b"id", b"m1", b"first", [b"1" * 100])
    assert store.put(b"id", b"m2", b"second, longer", [b"2" * 5000]) == size
    stored = store.get(b"id")
    assert stored is not None
    assert bytes(stored.inband) == b"first"
    assert _files(store) == [b"id".hex()]


def test_invalid_object_ids(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.put(b"", b"", b"")
    with pytest.raises(ValueError):
        store.get(b"x" * 65)
    with pytest.raises(TypeError):
        store.contains("abc")  # type: ignore[arg-type]
    store.put(b"x" * 64, b"", b"ok")
    assert store.object_ids() == [b"x" * 64]


# ---------------------------------------------------------------- deletion


def test_delete_while_view_is_held(store: ObjectStore) -> None:
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


def test_destroy(tmp_path: pathlib.Path) -> None:
    store = ObjectStore(tmp_path / "s")
    store.put(b"a", b"", b"1")
    store.destroy()
    assert not (tmp_path / "s").exists()
    store.destroy()  # idempotent
    with pytest.raises(StoreError, match="does not exist"):
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


def test_capacity_error_leaves_no_partial_file(tmp_path: pathlib.Path) -> None:
    store = ObjectStore(tmp_path / "cap", capacity_bytes=10_000)
    first = store.put(b"a", b"", b"", [b"x" * 6000])
    assert store.used_bytes() == first

    with pytest.raises(ObjectStoreFullError) as info:
        store.put(b"b", b"", b"", [b"y" * 6000])
    message = str(info.value)
    assert "10000" in message and str(first) in message and "capacity" in message
    assert info.value.used_bytes == first
    assert info.value.capacity_bytes == 10_000
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


def test_transfer_between_stores_chunkwise(tmp_path: pathlib.Path) -> None:
    source = ObjectStore(tmp_path / "node-a")
    target = ObjectStore(tmp_path / "node-b")
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


def test_raw_writer_abort_and_garbage(store: ObjectStore) -> None:
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


def test_raw_header_size_mismatch(tmp_path: pathlib.Path) -> None:
    source = ObjectStore(tmp_path / "a")
    target = ObjectStore(tmp_path / "b")
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
def test_corrupt_file(store: ObjectStore, mangle) -> None:  # type: ignore[no-untyped-def]
    store.put(b"c", b"m", b"inband", [b"buffer" * 10])
    path = store.path / b"c".hex()
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(CorruptObjectError) as info:
        store.get(b"c")
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    with pytest.raises(CorruptObjectError):
        store.open_raw(b"c")


# ---------------------------------------------------------------- listing


def test_listing_ignores_temp_files(store: ObjectStore) -> None:
    a = store.put(b"a", b"", b"1")
    b = store.put(b"b", b"", b"22", [b"3" * 100])
    (store.path / f".tmp-{b'c'.hex()}-{os.getpid()}-deadbeef").write_bytes(b"x" * 5000)
    (store.path / "not-an-object.txt").write_bytes(b"x")
    pending = store.create_raw(b"d", 4000)  # an in-flight transfer
    assert sorted(store.object_ids()) == [b"a", b"b"]
    assert store.used_bytes() == a + b
    pending.abort()
    store.delete(b"a")
    assert store.used_bytes() == b


def test_remove_stale_temp_files(store: ObjectStore) -> None:
    dead = store.path / ".tmp-aa-999999999-00000000"
    alive = store.path / f".tmp-aa-{os.getpid()}-00000000"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert store.remove_stale_temp_files() == 1
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


def test_a_full_store_spills_least_recently_used_objects_and_reads_them_back(tmp_path):
    np = pytest.importorskip("numpy")
    store = ObjectStore(tmp_path / "shm", capacity_bytes=3_500_000, spill_dir=tmp_path / "spill")
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


def test_without_a_spill_dir_a_full_store_refuses_and_says_spilling_is_off(tmp_path):
    store = ObjectStore(tmp_path / "shm", capacity_bytes=2_000_000)
    store.put(b"a" * 4, b"", b"x" * 1_500_000)
    with pytest.raises(ObjectStoreFullError, match="spilling is off"):
        store.put(b"b" * 4, b"", b"y" * 1_000_000)


def test_deleting_a_spilled_object_removes_it_from_disk(tmp_path):
    store = ObjectStore(tmp_path / "shm", capacity_bytes=2_000_000, spill_dir=tmp_path / "spill")
    store.put(b"a" * 4, b"", b"x" * 1_500_000)
    store.put(b"b" * 4, b"", b"y" * 1_500_000)  # spills a
    assert store.spilled()[0] == 1
    assert store.delete(b"a" * 4)
    assert store.spilled() == (0, 0)
    assert not store.contains(b"a" * 4)
