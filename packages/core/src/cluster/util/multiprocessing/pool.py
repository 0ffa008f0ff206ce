"""``Pool``: the standard library's ``multiprocessing.Pool``, with actors for processes.

Each of the pool's ``processes`` is an actor holding one CPU (``ray_remote_args`` changes
that) that ran ``initializer(*initargs)`` when it started. Work is cut into chunks, as the
standard library cuts it, and each chunk is one call to the actor with the fewest unfinished
chunks when it is submitted (all of a map's chunks are handed out at once); an actor that
has run ``maxtasksperchild`` chunks is replaced by a fresh one (the old one stops once its
calls are done). Results and errors come back as the standard library gives them: a function's
exception is raised again, as itself, by ``get``, ``map`` or the iterator.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing import TimeoutError
from typing import Any

from cluster.api.actors import ActorHandle, kill
from cluster.api.lifecycle import init, is_initialized, nodes
from cluster.api.objects import get, put, wait
from cluster.api.tasks import remote
from cluster.errors import GetTimeoutError
from cluster.objects.refs import ObjectRef

__all__ = ["AsyncResult", "IMapIterator", "Pool", "cluster_cpus"]

log = logging.getLogger(__name__)

Outcome = tuple[bool, Any]  # (True, value) or (False, the exception the function raised)
Call = tuple[tuple[Any, ...], dict[str, Any]]  # the positional and keyword arguments of one call

RUN, CLOSE, TERMINATE = "running", "closed", "terminated"


class _PoolProcess:
    """One process of a Pool: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run_chunk(self, func: Callable[..., Any], calls: list[Call]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for args, kwargs in calls:
            try:
                outcomes.append((True, func(*args, **kwargs)))
            except Exception as exc:  # the caller raises it, as multiprocessing does
                outcomes.append((False, exc))
        return outcomes


_PoolProcessClass = remote(_PoolProcess)


def cluster_cpus() -> int:
    """The CPUs of the cluster's live nodes, in all."""
    return int(sum(n["resources"].get("CPU", 0) for n in nodes() if n.get("state", "alive") == "alive"))


class Pool:
    """``Pool(processes=None, initializer=None, initargs=None, maxtasksperchild=None,
    context=None, ray_address=None, ray_remote_args=None)``.

    Connects with ``cluster.init(ray_address)`` when this process is not connected yet.
    ``processes`` defaults to the cluster's CPUs, and may not be more than them while each
    process holds a CPU. ``context`` is accepted and ignored.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: Mapping[str, Any] | None = None,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
                isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if context is not None:
            log.warning("cluster.util.multiprocessing.Pool ignores its context argument")
        if not is_initialized():
            init(ray_address)
        self._remote_args = {"num_cpus": 1, **dict(ray_remote_args or {})}
        self._processes = self._check_processes(processes)
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasksperchild = maxtasksperchild
        self._lock = threading.Lock()
        self._state = RUN
        self._actors = [self._start_process() for _ in range(self._processes)]
        self._chunks_run = [0] * self._processes
        # The unfinished chunks of each process, oldest first (a process runs them in order),
        # and those of processes replaced after maxtasksperchild: what join() waits for.
        self._in_flight: list[list[ObjectRef]] = [[] for _ in range(self._processes)]
        self._retired: list[ObjectRef] = []

    def _check_processes(self, processes: int | None) -> int:
        cpu_each = float(self._remote_args.get("num_cpus") or 0)
        cpus = cluster_cpus()
        if processes is None:
            processes = max(cpus, 1)
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if cpu_each and processes * cpu_each > cpus:
            raise ValueError(f"a pool of {processes} processes needs {processes * cpu_each:g} CPUs, and "
                             f"the cluster has {cpus}; ask for fewer processes, or pass "
                             "ray_remote_args={'num_cpus': ...}")
        return processes

    def _start_process(self) -> ActorHandle:
        actor: ActorHandle = _PoolProcessClass.options(**self._remote_args).remote(self._initializer, self._initargs)
        return actor

    # ------------------------------------------------------------------------- submitting

    def _submit(self, func: Any, chunks: Iterable[list[Call]]) -> list[ObjectRef]:
        """Each chunk to the process with the fewest unfinished chunks (the first of them)."""
        refs = []
        with self._lock:
            if self._state != RUN:
                raise ValueError("Pool not running")
            self._forget_finished()
            for chunk in chunks:
                slot = min(range(self._processes), key=lambda i: len(self._in_flight[i]))
                ref: ObjectRef = self._actors[slot].run_chunk.remote(func, chunk)
                refs.append(ref)
                self._in_flight[slot].append(ref)
                self._chunks_run[slot] += 1
                if self._maxtasksperchild is not None and self._chunks_run[slot] >= self._maxtasksperchild:
                    # Dropping the last handle stops the actor once its calls are done.
                    self._actors[slot] = self._start_process()
                    self._chunks_run[slot] = 0
                    self._retired += self._in_flight[slot]
                    self._in_flight[slot] = []
        return refs

    def _forget_finished(self) -> None:
        """Drop the finished chunks from the books (so their results are not kept alive here)."""
        if self._retired:
            self._retired = wait(self._retired, num_returns=len(self._retired), timeout=0)[1]
        while True:  # a process finishes its chunks in order: look at the oldest of each
            oldest = [queue[0] for queue in self._in_flight if queue]
            done = set(wait(oldest, num_returns=len(oldest), timeout=0)[0]) if oldest else set()
            if not done:
                return
            for queue in self._in_flight:
                if queue and queue[0] in done:
                    queue.pop(0)

    def _submit_chunks(self, func: Callable[..., Any], calls: Iterable[Call], chunksize: int) -> list[ObjectRef]:
        if self._state != RUN:
            raise ValueError("Pool not running")
        chunks = _chunked(calls, chunksize)
        first = next(chunks, None)
        if first is None:
            return []
        second = next(chunks, None)
        if second is None:
            return self._submit(func, [first])
        shipped = put(func)  # pickled once, however many chunks
        return self._submit(shipped, itertools.chain([first, second], chunks))

    def _default_chunksize(self, count: int) -> int:
        chunksize, extra = divmod(count, self._processes * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    # ------------------------------------------------------------------------------ apply

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` in a process of the pool; waits for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``func(*args, **kwds)`` in a process of the pool; an AsyncResult at once."""
        refs = self._submit(func, [[(tuple(args), dict(kwds or {}))]])
        return AsyncResult(refs, single=True, callback=callback, error_callback=error_callback)

    # -------------------------------------------------------------------------------- map

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[func(x) for x in iterable]``, computed by the pool, in order."""
        result: list[Any] = self.map_async(func, iterable, chunksize).get()
        return result

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """:meth:`map`, returning an AsyncResult at once."""
        return self._map_async(func, [((item,), {}) for item in iterable], chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        """``[func(*args) for args in iterable]``, computed by the pool, in order."""
        result: list[Any] = self.starmap_async(func, iterable, chunksize).get()
        return result

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """:meth:`starmap`, returning an AsyncResult at once."""
        return self._map_async(func, [(tuple(args), {}) for args in iterable], chunksize, callback, error_callback)

    def _map_async(self, func: Callable[..., Any], calls: list[Call], chunksize: int | None,
                   callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None) -> AsyncResult:
        size = self._default_chunksize(len(calls)) if chunksize is None else _check_chunksize(chunksize)
        refs = self._submit_chunks(func, calls, size)
        return AsyncResult(refs, single=False, callback=callback, error_callback=error_callback)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """An iterator over ``func(x)`` for each item, in order, as the results come."""
        refs = self._submit_chunks(func, (((item,), {}) for item in iterable), _check_chunksize(chunksize))
        return IMapIterator(refs, ordered=True)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Like :meth:`imap`, but chunks come back in the order they finish."""
        refs = self._submit_chunks(func, (((item,), {}) for item in iterable), _check_chunksize(chunksize))
        return IMapIterator(refs, ordered=False)

    # -------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Take no more work; what was submitted still runs (``join()`` waits for it)."""
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """Stop the processes now; unfinished work fails."""
        with self._lock:
            self._state = TERMINATE
            actors, self._actors = self._actors, []
        for actor in actors:
            kill(actor)

    def join(self) -> None:
        """Wait for the submitted work to finish, then stop the processes (after close())."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        with self._lock:
            outstanding = [*self._retired, *(ref for queue in self._in_flight for ref in queue)]
        if outstanding:
            wait(outstanding, num_returns=len(outstanding))
        self.terminate()

    def __enter__(self) -> Pool:
        if self._state != RUN:
            raise ValueError("Pool not running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<cluster.util.multiprocessing.Pool state={self._state} processes={self._processes}>"


class AsyncResult:
    """The result of ``apply_async``/``map_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, refs: list[ObjectRef], *, single: bool,
                 callback: Callable[[Any], Any] | None = None,
                 error_callback: Callable[[BaseException], Any] | None = None) -> None:
        self._refs = refs
        self._single = single
        self._outcome: Outcome | None = None
        if callback is not None or error_callback is not None:
            threading.Thread(target=self._call_back, args=(callback, error_callback),
                             name="pool-callback", daemon=True).start()

    def ready(self) -> bool:
        """Whether the work is done."""
        return self._outcome is not None or not self._refs or len(
            wait(self._refs, num_returns=len(self._refs), timeout=0)[0]) == len(self._refs)

    def successful(self) -> bool:
        """Whether the work is done and raised nothing; ValueError while it is not done."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._result(None)[0]

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the work is done, or ``timeout`` seconds."""
        if self._refs and self._outcome is None:
            wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list, for the map forms); raises the function's exception if it
        raised, multiprocessing.TimeoutError if not done within ``timeout`` seconds."""
        ok, value = self._result(timeout)
        if not ok:
            raise value
        return value

    def _result(self, timeout: float | None) -> Outcome:
        if self._outcome is None:
            self._outcome = _flatten(self._refs, timeout, self._single)
        return self._outcome

    def _call_back(self, callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None) -> None:
        ok, value = self._result(None)
        if ok and callback is not None:
            callback(value)
        elif not ok and error_callback is not None:
            error_callback(value)


class IMapIterator:
    """The iterator of ``imap``/``imap_unordered``; ``next(timeout)`` waits at most that long."""

    def __init__(self, refs: list[ObjectRef], *, ordered: bool) -> None:
        self._pending = list(refs)
        self._ordered = ordered
        self._ready: list[Outcome] = []  # the outcomes of the chunk being handed out

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        if not self._ready:
            if not self._pending:
                raise StopIteration
            if self._ordered:
                ref = self._pending[0]
            else:
                done, _ = wait(self._pending, num_returns=1, timeout=timeout)
                if not done:
                    raise TimeoutError
                ref = done[0]
            self._ready = list(_chunk_outcomes(ref, timeout))
            self._pending.remove(ref)
        ok, value = self._ready.pop(0)
        if not ok:
            raise value
        return value


# ---------------------------------------------------------------------------------- helpers


def _chunked(calls: Iterable[Call], size: int) -> Iterator[list[Call]]:
    it = iter(calls)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _check_chunksize(chunksize: int) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
    return chunksize


def _chunk_outcomes(ref: ObjectRef, timeout: float | None) -> list[Outcome]:
    """What a chunk's calls came to. A chunk that failed as a whole (its process died, say)
    counts as one failed outcome."""
    try:
        outcomes: list[Outcome] = get(ref, timeout=timeout)
    except GetTimeoutError:
        raise TimeoutError from None
    except Exception as exc:
        return [(False, exc)]
    return outcomes


def _flatten(refs: list[ObjectRef], timeout: float | None, single: bool) -> Outcome:
    """All chunks' values in order, or the first failure among them."""
    if refs:
        ready, _ = wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise TimeoutError
    values = []
    for ref in refs:
        for ok, value in _chunk_outcomes(ref, None):
            if not ok:
                return False, value
            values.append(value)
    return (True, values[0]) if single else (True, values)
