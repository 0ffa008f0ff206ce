"""Copying an object from one node's store into another's: in chunks, several in flight.

The receiving side asks the source node for the object's size, creates the file in its own
store, and fetches fixed-size chunks, a few at a time, straight into the file's mapping. A
connection that drops mid-way is dialled again and only the missing chunks are fetched
(``resumable``); an object that is gone from the source is lost, not retried.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from cluster.errors import ClusterConnectionError, ObjectLostError, RemoteCallError
from cluster.wire import messages as m

log = structlog.get_logger("cluster.transfer")

CHUNK = 8 << 20
IN_FLIGHT = 4
MAX_RESUMES = 5

Connect = Callable[[str, str], Awaitable[Any]]


async def pull_object(connect: Connect, store: Any, object_id: bytes, source: str, *, secondary: bool = False) -> int:
    """Copy ``object_id`` from the node at ``source`` into ``store``; return its size."""
    what = f"object {object_id.hex()}"
    try:
        conn = await connect(source, "the node holding the object")
        size = await conn.request(m.PullObject(object_id))
    except (ClusterConnectionError, RemoteCallError) as exc:
        raise ObjectLostError(f"{what} could not be fetched from {source}: {exc}") from None
    if size is None:
        raise ObjectLostError(f"{what} is no longer in the store of node {source}")
    options = {"secondary": True} if secondary and _supports_secondary(store) else {}
    # Creating the file allocates all its pages (a second or so per GB here): not on the loop.
    writer = await trio.to_thread.run_sync(functools.partial(store.create_raw, object_id, size, **options))
    with writer:
        view = writer.view
        missing = list(range(0, size, CHUNK))
        resumes = 0
        while True:
            missing = await _fetch_chunks(conn, object_id, size, view, missing, source)
            if not missing:
                break
            resumes += 1
            if resumes > MAX_RESUMES:
                raise ObjectLostError(
                    f"{what} could not be fetched from {source}: the connection dropped again after "
                    f"{resumes - 1} resumes ({len(missing)} chunks of {CHUNK >> 20} MiB still missing)"
                )
            log.info("transfer_resume", object_id=object_id.hex(), source=source, missing_chunks=len(missing))
            await trio.sleep(min(0.05 * 2**resumes, 1.0))
            try:
                conn = await connect(source, "the node holding the object")
            except ClusterConnectionError:
                continue  # counted as one more resume; the next round dials again
        writer.seal()
    return size


async def _fetch_chunks(conn: Any, object_id: bytes, size: int, view: memoryview, offsets: list[int], source: str) -> list[int]:
    """Fetch the chunks at ``offsets``; return those that failed because the connection broke."""
    failed: list[int] = []
    errors: list[ObjectLostError] = []
    limiter = trio.Semaphore(IN_FLIGHT)

    async def fetch(offset: int) -> None:
        length = min(CHUNK, size - offset)
        async with limiter:
            if conn.closed or errors:
                failed.append(offset)
                return
            try:
                received = await conn.request_into(m.PullChunk(object_id, offset, length), view[offset : offset + length])
            except ClusterConnectionError:
                failed.append(offset)
                return
            except RemoteCallError as exc:
                errors.append(ObjectLostError(f"object {object_id.hex()} could not be fetched from {source}: {exc}"))
                return
        if received != length:
            errors.append(ObjectLostError(
                f"object {object_id.hex()}: node {source} sent {received} bytes for a chunk of {length}"
            ))

    async with trio.open_nursery() as nursery:
        for offset in offsets:
            nursery.start_soon(fetch, offset)
    if errors:
        raise errors[0]
    return sorted(failed)


class ChunkSource:
    """The sending side: answers PullObject and PullChunk from a store, keeping a few
    objects' mappings open while their chunks go out."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._views: dict[bytes, memoryview] = {}

    def size(self, conn: Any, msg: m.PullObject, request_id: int) -> None:
        conn.reply(request_id, self.store.size_of(msg.object_id))

    def chunk(self, conn: Any, msg: m.PullChunk, request_id: int) -> None:
        view = self._views.get(msg.object_id)
        if view is None:
            view = self.store.open_raw(msg.object_id)
            if view is None:
                conn.reply_error(request_id, "lost", f"object {msg.object_id.hex()} is not in this store")
                return
            if len(self._views) > 8:
                self._views.clear()
            self._views[msg.object_id] = view
        end = msg.offset + msg.length
        conn.reply_raw(request_id, view[msg.offset : end])
        if end >= len(view):
            self._views.pop(msg.object_id, None)

    def forget(self, object_id: bytes) -> None:
        self._views.pop(object_id, None)


_SECONDARY: dict[type, bool] = {}


def _supports_secondary(store: Any) -> bool:
    kind = type(store)
    if kind not in _SECONDARY:
        try:
            _SECONDARY[kind] = "secondary" in inspect.signature(store.create_raw).parameters
        except (TypeError, ValueError):
            _SECONDARY[kind] = False
    return _SECONDARY[kind]
