"""How a function travels to workers: the function, where its source is, where its modules are.

cloudpickle ships functions defined in ``__main__`` (or in modules workers can't import) by
value and renames their file to ``<dynamic-code>``, which leaves remote tracebacks without file
names or source lines. Alongside the function we send its file name and, when the file is
small, its lines, so a worker can restore both. We also send the function's own directory, the
driver's script directory and its working directory: modules next to the script (imported by
the function, or defining the exceptions it raises) then import on workers too, as under Ray.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
import warnings
from typing import Any

import cloudpickle

from cluster.objects import values
from cluster.plugins import working_dir_of

MAX_SOURCE_BYTES = 256 * 1024
DYNAMIC = "<dynamic-code>"


def _largest_captures(target: Any) -> str:
    """The largest globals and closure variables ``target`` (a function, or a class's methods)
    refers to, with their pickled sizes."""
    functions = [target] if hasattr(target, "__code__") else [
        member for member in vars(target).values() if hasattr(member, "__code__")]
    sizes: dict[str, int] = {}
    for fn in functions:
        for _, name, value in values.captures(fn):
            try:
                sizes[name] = len(cloudpickle.dumps(value, protocol=5))
            except Exception:
                continue
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{name}: {size / 1e6:.1f} MB" for name, size in largest) or "nothing it names"


def pack_function(fn: Any) -> bytes:
    """cloudpickle ``fn`` (a function or an actor class) with what a worker needs to run it
    and report its errors well."""
    _ship_working_dir_modules()
    code = _code_of(fn)
    filename = code.co_filename if code is not None else None
    lines = None
    if filename and os.path.isfile(filename) and os.path.getsize(filename) <= MAX_SOURCE_BYTES:
        lines = linecache.getlines(filename)
    paths = []
    here = os.path.dirname(filename) if lines is not None else ""
    for path in (here, sys.path[0] if sys.path else "", os.getcwd(), *_received_paths):
        path = os.path.abspath(path or os.getcwd())
        if path not in paths:
            paths.append(path)
    # The function is pickled on its own, inside: a worker puts the paths (and the job's working
    # dir) on sys.path first, so modules the function refers to import while it is loaded.
    package = os.environ.get("CLUSTER_JOB_PACKAGE", "")
    if package:  # the working dir reaches workers as the package, unpacked on their own node
        inside = os.path.realpath(os.environ.get("CLUSTER_WORKING_DIR", "")) + os.sep
        paths = [p for p in paths if not (os.path.realpath(p) + os.sep).startswith(inside)]
    return cloudpickle.dumps((filename, lines, paths, package, cloudpickle.dumps(fn, protocol=5)), protocol=5)


def _ship_working_dir_modules() -> None:
    """In a job with a working dir (``$CLUSTER_WORKING_DIR``, set by the job's node), modules
    imported from that dir travel by value: workers on nodes that never unpacked it run them."""
    root = os.environ.get("CLUSTER_WORKING_DIR")
    if not root:
        return
    root = os.path.realpath(root) + os.sep
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (path and name not in _BY_VALUE and name != "__main__"
                and os.path.realpath(path).startswith(root)):
            cloudpickle.register_pickle_by_value(module)
            _BY_VALUE.add(name)


_BY_VALUE: set[str] = set()
_working_dirs: dict[str, str] = {}  # job package -> where it is unpacked on this node
# The search paths of the functions this process was sent. A function it sends on (a remote
# function a task captured, pickled by value where it was defined) needs them where it lands,
# and its own file is no guide: cloudpickle renamed that to <dynamic-code>.
_received_paths: list[str] = []


# Ray's thresholds for a pickled function or class: warn past the first, refuse past the second.
FUNCTION_SIZE_WARN_BYTES = 10 * 1000**2
FUNCTION_SIZE_ERROR_BYTES = 100 * 1000**2


def pack_once(cache: dict, target: Any, what: str) -> tuple[bytes, bytes]:
    """(id, packed bytes) of ``target``, packed on first use and kept in ``cache``. Too large
    (it captured big data) is refused, and near that warned about, naming what it captured."""
    if "blob" not in cache:
        try:
            blob = pack_function(target)
        except Exception as exc:
            raise TypeError(f"could not serialize {what}: {exc}{values.where_unpicklable(target, what)}") from None
        if len(blob) > FUNCTION_SIZE_WARN_BYTES:
            message = (f"{what} pickles to {len(blob) / 1e6:.0f} MB, because of what it captures "
                       f"({_largest_captures(target)}): pass large data as arguments or with "
                       "cluster.put() instead, so it travels once, through the object store")
            if len(blob) > FUNCTION_SIZE_ERROR_BYTES:
                raise ValueError(f"{message} (the limit is {FUNCTION_SIZE_ERROR_BYTES / 1e6:.0f} MB)")
            warnings.warn(message, stacklevel=3)
        cache["blob"] = blob
        cache["id"] = hashlib.blake2b(blob, digest_size=16).digest()
    return cache["id"], cache["blob"]


def unpack_function(data: bytes) -> Any:
    """The function from :func:`pack_function`, with its file name and search paths restored."""
    filename, lines, paths, package, blob = cloudpickle.loads(data)
    if package:
        working_dir = _working_dirs.get(package)
        if working_dir is None:
            working_dir = _working_dirs[package] = working_dir_of(package)
        if working_dir not in sys.path:
            sys.path.insert(0, working_dir)
    for path in paths:
        if path not in _received_paths:
            _received_paths.append(path)
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    fn = cloudpickle.loads(blob)
    if filename:
        renamed = False
        for function in _functions_of(fn):
            if function.__code__.co_filename == DYNAMIC:
                function.__code__ = _rename(function.__code__, filename)
                renamed = True
        if renamed and lines and not os.path.isfile(filename):
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return fn


def _functions_of(obj: Any) -> list[types.FunctionType]:
    """The function itself, or the functions defined in a class's body."""
    if isinstance(obj, types.FunctionType):
        return [obj]
    if isinstance(obj, type):
        found = []
        for member in vars(obj).values():
            member = getattr(member, "__func__", member)  # staticmethod, classmethod
            if isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                found.append(member)
        return found
    return []


def _code_of(obj: Any) -> types.CodeType | None:
    functions = _functions_of(obj)
    return functions[0].__code__ if functions else getattr(obj, "__code__", None)


def _rename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_rename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
