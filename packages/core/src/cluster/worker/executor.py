"""A worker process: executes the tasks its lease holders push to it, one at a time.

Started by a node daemon as ``python -m cluster.worker.executor``, with its configuration (including the
cluster token) as one JSON line on stdin. Tasks arrive on the trio thread of the process's
:class:`~cluster.owner.runtime.Runtime` and run on the main thread (user code holds the GIL anyway);
results go back to each task's owner, batched while more tasks are queued.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import io
import json
import os
import pickle
import queue
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from cluster import log as cluster_log
from cluster.api.lifecycle import set_worker_runtime
from cluster.context import ActorExitRequested, current_namespace, current_task_id
from cluster.errors import (
    ActorCreationError,
    ActorDiedError,
    ClusterConnectionError,
    ClusterError,
    TaskCancelledError,
    TaskError,
)
from cluster.node.envs import enter as enter_runtime_env
from cluster.objects import values as v
from cluster.objects.functions import unpack_function
from cluster.objects.refs import collect_incoming
from cluster.owner.runtime import Runtime
from cluster.session import die_with_parent
from cluster.wire import messages as m
from cluster.worker.concurrency import ConcurrencyGroups

FLUSH_AFTER_S = 0.002  # send results at least this often while more tasks are queued
STARTED_WITH_GPUS = os.environ.get("CUDA_VISIBLE_DEVICES")  # as the node daemon was started (None: unset)


class Executor:
    """Runs pushed tasks on the main thread and sends their results back."""

    def __init__(self, runtime: Any, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.pid = os.getpid()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._functions: dict[bytes, Any] = {}
        self._function_blobs: dict[bytes, bytes] = {}  # code that came with tasks not run yet
        self._lock = threading.Lock()
        self._current: tuple[Any, Any] | None = None
        self._cancelled: set[bytes] = set()  # running calls cancelled (is_canceled() is true in them)
        self._running: dict[bytes, _Call] = {}  # concurrent actor calls started, by task id
        self._queued: dict[bytes, Any] = {}  # pushed, not started -> the owner's connection
        self._queued_names: dict[bytes, str] = {}
        self._skip: set[bytes] = set()  # cancelled before they started: already answered
        self._blocked_depth = 0
        self._results: dict[Any, list] = {}  # made on the main thread, not sent yet (see run)
        self._actor: Any = None  # the instance, once this worker is an actor
        self.actor_id: bytes | None = None
        self._concurrent: ConcurrencyGroups | None = None  # an actor's lanes, unless one call at a time
        self._actor_error: list | None = None
        self._owner_conn: Any = None  # an actor's: the connection its owner created it on
        self._actor_resources: dict[str, float] = {}
        self.restarted = False  # an actor's: this instance replaces one that died
        self.actor_handle: tuple = ()  # an actor's: what its own handle is made of (current_actor)
        self._runs: dict[bytes, _StreamRun] = {}  # generator tasks running, by task id
        self._early_stops: set[bytes] = set()  # generator tasks whose consumer left before they ran
        self._gpus: list[str] | None = None  # the GPUs CUDA_VISIBLE_DEVICES names now (None: as started)

    def create_actor(self, conn: Any, request_id: int, msg: m.CreateActor) -> None:
        """Queue the actor's construction: it runs on the main thread, before any call."""
        self._queue.put((conn, _Creation(msg, request_id)))

    # -- called on the trio thread --

    def push(self, conn: Any, tasks: list) -> None:
        put = self._queue.put
        with self._lock:
            for spec in tasks:
                if spec.function is not None and spec.function_id not in self._functions:
                    # (kept apart: the task that brought it may be stolen or cancelled, not run)
                    self._function_blobs[spec.function_id] = spec.function
                self._queued[spec.task_id] = conn
                self._queued_names[spec.task_id] = spec.name
                put((conn, spec))

    def cancel(self, conn: Any, task_id: bytes, force: bool) -> None:
        with self._lock:
            run = self._runs.get(task_id)
            if run is not None:  # a generator stops at its next yield (in any thread)
                run.signal(stop="cancelled")
            current = self._current
            if current is not None and current[1].task_id == task_id:
                if force:
                    os._exit(1)
                self._cancelled.add(task_id)
                if self.actor_id is None:  # (an actor call only sees the flag: its state stays whole, as Ray)
                    # A real signal, not interrupt_main(): it also breaks blocking calls like sleep.
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            elif task_id in self._running:
                if force:
                    os._exit(1)
                self._cancelled.add(task_id)
                call = self._running[task_id]
                if call.task is not None:  # an async call: its asyncio task is cancelled (at its next await)
                    call.loop.call_soon_threadsafe(call.task.cancel)
            elif task_id in self._queued:
                # Not started: answer now instead of after the tasks queued before it.
                self._queued.pop(task_id, None)
                self._skip.add(task_id)
                name = self._queued_names.pop(task_id, "task")
                entry = v.serialize_error(TaskCancelledError(name))
                conn.send(m.TaskResults([m.TaskResult(task_id, [entry], self.pid)]))

    def stream_signal(self, msg: m.GeneratorConsumed | m.GeneratorStop) -> None:
        """The owner of a generator task took more of its values, or stopped consuming."""
        with self._lock:
            run = self._runs.get(msg.task_id)
            if run is None:
                if type(msg) is m.GeneratorStop and msg.task_id in self._queued:
                    self._early_stops.add(msg.task_id)
                return
        if type(msg) is m.GeneratorConsumed:
            run.signal(consumed=msg.consumed)
        else:
            run.signal(stop="dropped")

    def assigned_resources(self) -> dict[str, float]:
        """What the code running now holds: its actor's resources, or its task's."""
        if self.actor_id is not None:
            return dict(self._actor_resources)
        current = self._current
        if current is None:
            return {}
        resources = current[1].resources
        return {"CPU": 1.0} if resources is None else dict(resources)

    def _use_gpus(self, gpus: list[str] | None) -> None:
        """Show the code that runs next only ``gpus`` (CUDA_VISIBLE_DEVICES, as Ray sets it);
        None: the worker's own setting again."""
        self._gpus = gpus
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif STARTED_WITH_GPUS is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = STARTED_WITH_GPUS

    def gpu_ids(self) -> list[int] | list[str]:
        """``cluster.get_gpu_ids()``: the GPUs of the task or actor running now; ints unless the
        node was started with CUDA_VISIBLE_DEVICES (then its names, as Ray)."""
        gpus = self._gpus or []
        if STARTED_WITH_GPUS is None and all(gpu.isdigit() for gpu in gpus):
            return [int(gpu) for gpu in gpus]
        return list(gpus)

    def spec_of(self, task_id: bytes) -> Any:
        """The spec of call ``task_id`` running here (None: not running)."""
        current = self._current
        if current is not None and current[1].task_id == task_id:
            return current[1]
        call = self._running.get(task_id)
        return call.spec if call is not None else None

    def function_name(self, spec: Any) -> str:
        """The qualified name of what ``spec`` runs (Ray's get_task_function_name)."""
        if spec.method:
            cls = type(self._actor)
            return f"{cls.__module__}.{cls.__qualname__}.{spec.method}"
        fn = self._functions.get(spec.function_id)
        fn = getattr(fn, "__wrapped__", fn)
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', spec.name)}"

    def is_canceled(self, task_id: bytes) -> bool:
        """Whether the call ``task_id`` running here was cancelled (Ray's ``is_canceled()``)."""
        return task_id in self._cancelled

    @property
    def actor(self) -> Any:
        """The actor instance this worker holds (None: not an actor)."""
        return self._actor

    @property
    def is_async_actor(self) -> bool:
        return self._concurrent is not None and self._concurrent.is_async

    def steal(self, conn: Any, max_tasks: int) -> list[bytes]:
        """Give back up to ``max_tasks`` of ``conn``'s tasks that have not started, newest first;
        they will be skipped here (no result is sent for them)."""
        with self._lock:
            ids = [task_id for task_id, owner in reversed(self._queued.items()) if owner is conn][:max(0, max_tasks)]
            for task_id in ids:
                del self._queued[task_id]
                self._queued_names.pop(task_id, None)
                self._skip.add(task_id)
        return ids

    def stop(self, *_: Any) -> None:
        self._queue.put(None)

    # -- main thread --

    @property
    def current(self) -> tuple[Any, Any] | None:
        return self._current

    def concurrent_call(self) -> tuple[Any, Any] | None:
        """(conn, spec) of the concurrent actor call running in this thread or coroutine."""
        task_id = current_task_id.get()
        call = self._running.get(task_id) if task_id is not None else None
        return (call.conn, call.spec) if call is not None else None

    def notify_blocked(self, blocked: bool) -> bool:
        """Tell the node this worker waits in ``get`` (its CPU can run other tasks meanwhile)."""
        if threading.current_thread() is not threading.main_thread() or self._current is None:
            return False
        self._blocked_depth += 1 if blocked else -1
        if (blocked and self._blocked_depth == 1) or (not blocked and self._blocked_depth == 0):
            if blocked and self._results:  # what this task waits for may be among them
                self._flush_results()
            node_conn = self.runtime.node_conn
            self.runtime.soon(node_conn.send, m.WorkerBlocked(self.worker_id, blocked))
            # And the task's owner: tasks it queued here behind this one must go elsewhere.
            self.runtime.soon(_send_quietly, self._current[0], m.WorkerBlocked(self.worker_id, blocked))
        return True

    def run(self) -> None:
        results = self._results
        last_flush = time.monotonic()
        get = self._queue.get
        while True:
            result = None
            try:
                item = get()
                if item is None:
                    break
                conn, spec = item
                if type(spec) is _Creation:
                    self._construct(conn, spec)
                    continue
                result = self.execute(conn, spec)
            except KeyboardInterrupt:
                pass  # a cancel that arrived just after its task ended
            if result is not None:
                results.setdefault(conn, []).append(result)
            now = time.monotonic()
            if results and (self._queue.empty() or now - last_flush > FLUSH_AFTER_S):
                last_flush = now
                self._flush_results()
        if results:  # (stopped with results still batched)
            self._flush_results()

    def _flush_results(self) -> None:
        """Send the results batched so far (main thread only)."""
        batch = dict(self._results)
        self._results.clear()
        _send_results(batch)

    def execute(self, conn: Any, spec: Any) -> m.TaskResult | None:
        task_id = spec.task_id
        cancelled = False
        if self._concurrent is not None and spec.method:
            self._start_concurrent(conn, spec)
            return None
        try:
            with self._lock:
                if task_id in self._skip:
                    self._skip.discard(task_id)
                    return None
                self._queued.pop(task_id, None)
                self._queued_names.pop(task_id, None)
                self._current = (conn, spec)  # from here on, a cancel interrupts this task
            try:
                if spec.method:
                    fn = getattr(self._actor, spec.method, None) or _builtin_method(self._actor, spec.method)
                else:
                    if spec.gpu_ids != self._gpus:
                        self._use_gpus(spec.gpu_ids)
                    fn = self._functions.get(spec.function_id)
                if fn is None:
                    blob = spec.function or self._function_blobs.get(spec.function_id)
                    if blob is None:
                        raise RuntimeError(f"the code of {spec.name} never reached this worker")
                    fn = self._functions[spec.function_id] = unpack_function(blob)
                    self._function_blobs.pop(spec.function_id, None)
                try:
                    args, kwargs = self._load_arguments(spec.args, spec.deps)
                except ClusterError as exc:  # an argument failed or is lost: pass it on as is
                    return m.TaskResult(task_id, [v.serialize_error(exc)], self.pid)
                running = current_task_id.set(task_id)
                caller = current_namespace.set(spec.namespace)
                try:
                    out = fn(*args, **kwargs)
                    if spec.stream is not None:
                        if self._results:  # (what ran before it must not wait for it to end)
                            self._flush_results()
                        out = self._drive(conn, spec, out)
                finally:
                    current_namespace.reset(caller)
                    current_task_id.reset(running)
            finally:
                for stream in _streams:
                    stream.flush_partial((conn, spec))
                with self._lock:
                    self._current = None
                    cancelled = task_id in self._cancelled
                    self._cancelled.discard(task_id)
            if cancelled:  # it ran on (an actor call is never interrupted): its caller still sees the cancel, as Ray
                return self._cancelled_result(spec)
            return self._result(spec, out)
        except ActorExitRequested:
            self.exit_actor(conn, spec)
        except _StreamCancelled:
            return self._cancelled_result(spec)
        except KeyboardInterrupt:
            if cancelled:
                return self._cancelled_result(spec)
            entries = [v.serialize_error(TaskError(spec.name, _remote_traceback(), None))]
        except BaseException as exc:
            entries = [v.serialize_error(TaskError(spec.name, _remote_traceback(), exc))]
        return m.TaskResult(task_id, entries, self.pid)

    def _load_arguments(self, payload: bytes, deps: list) -> tuple[tuple, dict]:
        with collect_incoming() as incoming:
            args, kwargs = pickle.loads(payload)
        if incoming:  # refs nested in the arguments: we borrow them now
            self.runtime.register_borrowed(incoming)
            del incoming
        if deps:
            load = self.runtime.load_entry
            args, kwargs = v.fill_deps(args, kwargs, [load(entry) for entry in deps])
        return args, kwargs

    def _result(self, spec: Any, out: Any) -> m.TaskResult:
        """The task's result message: its return values as value entries (stored if large)."""
        task_id = spec.task_id
        if spec.num_returns == 1:
            outs = [out]
        else:
            outs = list(out) if isinstance(out, tuple | list) else None
            if outs is None or len(outs) != spec.num_returns:
                raise ValueError(
                    f"{spec.name} declares num_returns={spec.num_returns} but returned "
                    f"{type(out).__name__} {'of length ' + str(len(outs)) if outs else ''}".rstrip()
                )
        entry_for = self.runtime.entry_for
        entries = []
        contained = []
        for i, o in enumerate(outs):
            try:
                ser = v.serialize(o)
            except TypeError as exc:  # (raised without our frames: the message says what and where)
                what = "its return value" if spec.num_returns == 1 else f"its return value #{i}"
                raise TypeError(f"{spec.name}: could not serialize {what}: "
                                f"{exc.__cause__ or exc}{v.where_unpicklable(o, 'the value')}") from None
            entries.append(entry_for(task_id + i.to_bytes(4, "little"), ser, spec.owner))
            if ser.refs:
                unique = {ref.id: ref for ref in ser.refs}
                contained += [m.ContainedRef(i, ref.id, ref.owner) for ref in unique.values()]
                # The caller owns the result, so it must hold these refs before we let go.
                self.runtime.register_for(list(unique.values()), spec.owner)
        if contained:
            return m.TaskResult(task_id, entries, self.pid, contained)
        return m.TaskResult(task_id, entries, self.pid)

    # -- generator tasks: each value yielded goes to the owner at once (docs/design/0014) --

    def _drive(self, conn: Any, spec: Any, out: Any) -> Any:
        """Run generator ``out`` of task ``spec`` to its end (or until its consumer goes),
        sending each value it yields; the task's own return value."""
        if inspect.isasyncgen(out):  # an async generator as a task: on an event loop of its own
            return asyncio.run(self._drive_async(conn, spec, out))
        run = self._start_run(conn, spec, out)
        try:
            for value in out:
                self._emit(run, value)
                run.pause(self.notify_blocked)
                if run.stop:
                    out.close()  # (its finally blocks run now)
                    break
        finally:
            self._end_run(run)
        return self._stream_return(run)

    async def _drive_async(self, conn: Any, spec: Any, out: Any) -> Any:
        """``_drive`` on an event loop (async actors): waits without blocking the loop."""
        run = self._start_run(conn, spec, out)
        run.loop = asyncio.get_running_loop()
        try:
            if inspect.isasyncgen(out):
                async for value in out:
                    self._emit(run, value)
                    await run.pause_async()
                    if run.stop:
                        await out.aclose()
                        break
            else:
                for value in out:
                    self._emit(run, value)
                    await run.pause_async()
                    if run.stop:
                        out.close()
                        break
        except asyncio.CancelledError:  # cancelled while it waited on its consumer: it ends here
            if inspect.isasyncgen(out):
                await out.aclose()
            else:
                out.close()
            raise
        finally:
            self._end_run(run)
        return self._stream_return(run)

    def _start_run(self, conn: Any, spec: Any, out: Any) -> _StreamRun:
        if not (inspect.isgenerator(out) or inspect.isasyncgen(out)):
            raise TypeError(f"{spec.name} was called as a generator (num_returns=\"streaming\" or "
                            f"\"dynamic\") but returned {type(out).__name__}, not a generator: use yield")
        run = _StreamRun(conn, spec)
        with self._lock:
            self._runs[spec.task_id] = run
            if spec.task_id in self._early_stops:
                self._early_stops.discard(spec.task_id)
                run.stop = "dropped"
        return run

    def _end_run(self, run: _StreamRun) -> None:
        with self._lock:
            self._runs.pop(run.spec.task_id, None)

    def _stream_return(self, run: _StreamRun) -> Any:
        if run.stop == "cancelled":
            raise _StreamCancelled()
        if not run.stop and run.index < run.resume:
            raise RuntimeError(
                f"{run.spec.name} ran again after its worker died and yielded {run.index} values, "
                f"fewer than the {run.resume} of its first run: a generator that is retried must "
                "yield the same values each time (or set max_retries=0)")
        return None

    def _emit(self, run: _StreamRun, value: Any) -> None:
        """Send one yielded value to the task's owner (unless an earlier run sent it)."""
        index = run.index
        run.index += 1
        if index < run.resume or run.stop:
            return
        spec = run.spec
        try:
            ser = v.serialize(value)
        except TypeError as exc:  # (raised without our frames: the message says what and where)
            raise TypeError(f"{spec.name}: could not serialize the value it yielded (#{index}): "
                            f"{exc.__cause__ or exc}{v.where_unpicklable(value, 'the value')}") from None
        object_id = spec.task_id + (index + 1).to_bytes(4, "little")
        entry = self.runtime.entry_for(object_id, ser, spec.owner)
        contained = []
        if ser.refs:
            unique = {ref.id: ref for ref in ser.refs}
            contained = [m.ContainedRef(0, ref.id, ref.owner) for ref in unique.values()]
            self.runtime.register_for(list(unique.values()), spec.owner)
        try:
            run.conn.send_threadsafe(m.GeneratorItem(spec.task_id, index, entry, contained))
        except ClusterConnectionError:
            run.stop = "gone"  # the owner is gone: nobody will read the rest
            if type(entry) is m.StoredValue:
                self.runtime.store.delete(object_id)

    # -- concurrent actors: calls run on an asyncio loop, or on a pool of threads --

    def _start_concurrent(self, conn: Any, spec: Any) -> None:
        task_id = spec.task_id
        with self._lock:
            self._queued.pop(task_id, None)
            self._queued_names.pop(task_id, None)
            if task_id in self._skip:
                self._skip.discard(task_id)
                return
            self._running[task_id] = _Call(conn, spec)  # from here on, a cancel reaches it
        groups = self._concurrent
        assert groups is not None
        try:
            lane = groups.lane(spec.method, spec.group)
            fn = getattr(self._actor, spec.method, None) or _builtin_method(self._actor, spec.method)
            args, kwargs = self._load_arguments(spec.args, spec.deps)
        except BaseException as exc:
            self._finish_concurrent(conn, spec, self._error_result(spec, exc))
            return
        if groups.is_async:
            lane.start(lambda limit: self._run_async(conn, spec, fn, args, kwargs, limit))
        else:
            lane.start(lambda: self._run_threaded(conn, spec, fn, args, kwargs))

    async def _run_async(self, conn: Any, spec: Any, fn: Any, args: tuple, kwargs: dict,
                         limit: asyncio.Semaphore) -> None:
        task_id = spec.task_id
        with self._lock:
            call = self._running[task_id]
            call.loop, call.task = asyncio.get_running_loop(), asyncio.current_task()
            cancelled = task_id in self._cancelled
        try:
            if cancelled:  # (before it started)
                raise asyncio.CancelledError()
            async with limit:
                current_task_id.set(task_id)  # (this coroutine's own context)
                current_namespace.set(spec.namespace)
                out = fn(*args, **kwargs)
                if spec.stream is not None:
                    out = await self._drive_async(conn, spec, out)
                elif inspect.isawaitable(out):
                    out = await out
                result = self._result(spec, out)
        except ActorExitRequested:
            self.exit_actor(conn, spec)
        except BaseException as exc:
            result = self._error_result(spec, exc)
        self._finish_concurrent(conn, spec, result)

    def _run_threaded(self, conn: Any, spec: Any, fn: Any, args: tuple, kwargs: dict) -> None:
        running = current_task_id.set(spec.task_id)
        caller = current_namespace.set(spec.namespace)
        try:
            out = fn(*args, **kwargs)
            if spec.stream is not None:
                out = self._drive(conn, spec, out)
            result = self._result(spec, out)
        except ActorExitRequested:
            self.exit_actor(conn, spec)
        except BaseException as exc:
            result = self._error_result(spec, exc)
        finally:
            current_namespace.reset(caller)
            current_task_id.reset(running)
        self._finish_concurrent(conn, spec, result)

    def _finish_concurrent(self, conn: Any, spec: Any, result: m.TaskResult) -> None:
        for stream in _streams:
            stream.flush_partial((conn, spec), spec.task_id)
        with self._lock:
            self._running.pop(spec.task_id, None)
            if spec.task_id in self._cancelled:  # whatever it returned, its caller sees the cancel
                self._cancelled.discard(spec.task_id)
                result = self._cancelled_result(spec)
        self._send_one(conn, result)

    def exit_actor(self, conn: Any, spec: Any) -> NoReturn:
        """``exit_actor()`` ran in ``spec``: its caller sees the actor's death, the owner hears it
        was meant (no restart), what was sent goes out, the atexit handlers run, and the worker
        exits. Calls queued behind it fail with ActorDiedError as the connections close."""
        name = type(self._actor).__name__
        reason = f"it exited intentionally (exit_actor() in {spec.name})"
        error = ActorDiedError(f"actor {name} ({(self.actor_id or b'').hex()[:12]}) is dead: {reason}")
        if self._owner_conn is not None:
            _send_quietly(self._owner_conn, m.ActorExited(self.actor_id or b"", reason))
        self._send_one(conn, m.TaskResult(spec.task_id, [v.serialize_error(error)], self.pid))
        _results_flushed({conn, self._owner_conn} - {None}, timeout=5)
        try:
            atexit._run_exitfuncs()  # (os._exit below skips them, as it skips everything else)
        finally:
            os._exit(0)

    def _cancelled_result(self, spec: Any) -> m.TaskResult:
        return m.TaskResult(spec.task_id, [v.serialize_error(TaskCancelledError(spec.name))], self.pid)

    def _error_result(self, spec: Any, exc: BaseException) -> m.TaskResult:
        # (a cancelled concurrent call's result, whatever it is, becomes the cancel: _finish_concurrent)
        if isinstance(exc, _StreamCancelled):
            return self._cancelled_result(spec)
        if isinstance(exc, ClusterError) and not isinstance(exc, TaskError):
            entry = v.serialize_error(exc)  # an argument failed or is lost: pass it on as is
        else:
            entry = v.serialize_error(TaskError(spec.name, _remote_traceback(), exc))
        return m.TaskResult(spec.task_id, [entry], self.pid)

    def _send_one(self, conn: Any, result: m.TaskResult) -> None:
        _send_results({conn: [result]})

    def _construct(self, conn: Any, creation: _Creation) -> None:
        msg = creation.msg
        error = None
        try:
            cls = unpack_function(msg.class_blob)
            with collect_incoming() as incoming:
                args, kwargs = pickle.loads(msg.args)
            if incoming:
                self.runtime.register_borrowed(incoming)
                del incoming
            if msg.deps:
                load = self.runtime.load_entry
                args, kwargs = v.fill_deps(args, kwargs, [load(entry) for entry in msg.deps])
            # (the constructor's runtime context: its actor id, resources, whether it restarts)
            self.actor_id = msg.actor_id
            self._actor_resources = dict(msg.resources)
            self._use_gpus(list(msg.gpu_ids) or None)
            self.restarted = msg.restarted
            self.actor_handle = (msg.actor_id, msg.class_name, msg.handle_owner, msg.name_key)
            building = current_task_id.set(msg.actor_id)
            try:
                self._actor = cls(*args, **kwargs)
            finally:
                current_task_id.reset(building)
            self._owner_conn = conn
            self._concurrent = ConcurrencyGroups.for_actor(cls, msg.max_concurrency, msg.concurrency_groups)
        except BaseException as exc:
            self.actor_id = None  # (not an actor after all)
            error = v.serialize_error(ActorCreationError(f"{msg.class_name}.__init__", _remote_traceback(), exc))
        self.runtime.soon(conn.reply, creation.request_id, error)


class _Call:
    """A concurrent actor call that started: its spec, and its asyncio task (async actors)."""

    __slots__ = ("conn", "loop", "spec", "task")

    def __init__(self, conn: Any, spec: Any) -> None:
        self.conn = conn  # (where what it prints goes, with its result)
        self.spec = spec
        self.loop: Any = None
        self.task: Any = None


class _StreamCancelled(BaseException):
    """A generator task was cancelled, seen at one of its yields."""


class _StreamRun:
    """A generator task running here: how far it got and what its owner said."""

    def __init__(self, conn: Any, spec: Any) -> None:
        self.conn = conn
        self.spec = spec
        stream = spec.stream
        self.backpressure = stream.backpressure
        self.resume = stream.resume  # values the owner has from an earlier run: not sent again
        self.consumed = stream.consumed
        self.dynamic = stream.dynamic
        self.index = 0  # values yielded so far
        self.stop = ""  # why it stops at its next yield: "dropped", "cancelled", "gone"
        self.cond = threading.Condition(threading.Lock())
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None

    def signal(self, consumed: int = -1, stop: str = "") -> None:
        """From the runtime's thread: more values consumed, or stop; wakes a paused producer."""
        with self.cond:
            self.consumed = max(self.consumed, consumed)
            if stop and not self.stop:
                self.stop = stop
            self.cond.notify_all()
            if self.loop is not None and self.event is not None:
                self.loop.call_soon_threadsafe(self.event.set)

    def _paused(self) -> bool:
        if self.stop or not self.backpressure or self.index <= self.resume:
            return False
        if self.conn.closed:
            self.stop = "gone"
            return False
        return self.index - self.consumed >= self.backpressure

    def pause(self, notify_blocked: Any) -> None:
        """Back-pressure: wait while ``backpressure`` values are unconsumed. Meanwhile the
        worker counts as blocked (as in ``get``): its node lends its CPU, and its owner takes
        back the tasks queued behind this one (the consumer may be waiting for one of them)."""
        with self.cond:
            if not self._paused():
                return
        blocked = notify_blocked(True)
        try:
            with self.cond:
                while self._paused():
                    self.cond.wait(1.0)  # (woken by signal; the timeout only rechecks the connection)
        finally:
            if blocked:
                notify_blocked(False)

    async def pause_async(self) -> None:
        while True:
            with self.cond:
                if not self._paused():
                    return
                self.event = asyncio.Event()
            try:
                await asyncio.wait_for(self.event.wait(), 1.0)
            except TimeoutError:
                pass


class _Creation:
    """A CreateActor waiting in the executor's queue."""

    __slots__ = ("msg", "request_id")

    def __init__(self, msg: m.CreateActor, request_id: int) -> None:
        self.msg = msg
        self.request_id = request_id


def _ray_ready() -> bool:
    return True


def _ray_terminate() -> NoReturn:
    raise ActorExitRequested()


def _builtin_method(actor: Any, name: str) -> Any:
    """Ray's built-in methods of every actor: ``__ray_ready__`` (True once it is built) and
    ``__ray_terminate__`` (ends it, as ``exit_actor()``, after the calls sent before it)."""
    if name == "__ray_ready__":
        return _ray_ready
    if name == "__ray_terminate__":
        return _ray_terminate
    return getattr(actor, name)  # raises the AttributeError that names it


def _send_results(batch: dict) -> None:
    """Send results from the thread that made them (no hop through the trio thread)."""
    for conn, results in batch.items():
        try:
            conn.send_threadsafe(m.TaskResults(results))
        except ClusterConnectionError:
            pass  # the owner is gone


def _results_flushed(conns: set, timeout: float) -> None:
    """Wait (bounded) until what was sent on ``conns`` is out of this process."""
    deadline = time.monotonic() + timeout
    while any(not conn.closed and conn.sending for conn in conns) and time.monotonic() < deadline:
        time.sleep(0.005)


def _send_quietly(conn: Any, msg: Any) -> None:
    try:
        conn.send(msg)
    except ClusterConnectionError:
        pass  # the peer is gone


def _remote_traceback() -> str:
    import traceback

    exc_type, exc, tb = sys.exc_info()
    # Drop the frames of this module so the traceback starts in the user's code.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(exc_type, exc, tb)) + f"(on worker pid={os.getpid()})"


# --- output forwarding --------------------------------------------------------------------

_executor: Executor | None = None
_streams: list[_TaskOutput] = []


class _TaskOutput(io.TextIOBase):
    """Tees what a task prints: to the worker's log file and, by line, to the task's owner."""

    def __init__(self, name: str, original: Any) -> None:
        self._name = name
        self._original = original
        self._partial: dict[bytes, str] = {}  # an unfinished line, by call (b"": the main thread's task)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._original.write(text)
        executor = _executor
        if executor is None:
            return len(text)
        current, key = executor.current, b""
        if current is None:  # a call of a threaded or async actor, or nothing (the worker's own output)
            current = executor.concurrent_call()
            if current is None:
                return len(text)
            key = current[1].task_id
        partial = self._partial.pop(key, "") + text
        if "\n" in partial:
            complete, partial = partial.rsplit("\n", 1)
            self._forward(current, complete)
        if partial:
            self._partial[key] = partial
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def flush_partial(self, current: Any, key: bytes = b"") -> None:
        partial = self._partial.pop(key, "")
        if partial and current is not None:
            self._forward(current, partial)

    def _forward(self, current: tuple, text: str) -> None:
        conn, spec = current
        msg = m.LogLines(spec.name, os.getpid(), self._name, text)
        try:  # from the task's own thread, so its output goes out ahead of its result
            conn.send_threadsafe(msg)
        except ClusterConnectionError:
            pass


def main() -> None:
    """Entry point of ``python -m cluster.worker.executor``: the configuration comes on stdin."""
    config = json.loads(sys.stdin.readline())
    sys.stdin.close()
    run(config)


def run(config: dict[str, Any]) -> None:
    """Run a worker until its node daemon goes away."""
    global _executor
    die_with_parent()
    cluster_log.configure(config["log_dir"], f"worker-{os.getpid()}")
    node = config["node"]
    os.environ["CLUSTER_NODE_ID"] = node["node_id"]
    env_setup = config.get("runtime_env")
    if env_setup:  # this worker runs in a runtime env: its env vars, cwd, sys.path, virtualenv
        enter_runtime_env(env_setup)
    runtime = Runtime(
        token=config["token"],
        head_address=config["head_address"],
        node=node,
        role="worker",
    )
    if env_setup:
        runtime.runtime_env = env_setup["spec"]  # what its tasks submit inherits it (Ray's rule)
    executor = _executor = Executor(runtime, config["worker_id"])
    runtime.executor = executor
    signal.signal(signal.SIGTERM, executor.stop)  # its node stops: finish what was pushed, exit
    runtime.start()
    set_worker_runtime(runtime)
    runtime.node_conn.on_close.append(executor.stop)
    for name in ("stdout", "stderr"):
        stream = _TaskOutput(name, getattr(sys, name))
        _streams.append(stream)
        setattr(sys, name, stream)
    runtime.call_async(
        runtime.node_conn.request, m.RegisterWorker(config["worker_id"], runtime.address, os.getpid())
    )
    executor.run()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
