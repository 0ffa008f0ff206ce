"""Value entries and argument markers (cluster.objects.values): pure, no processes, no runtime."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from cluster.errors import TaskError
from cluster.objects import values as v
from cluster.objects.refs import ObjectRef
from cluster.wire import codec
from cluster.wire import messages as m


def through_the_wire(entry: m.InlineValue) -> m.InlineValue:
    """The entry as a task's owner receives it: inside a TaskResult, encoded and decoded."""
    frame = codec.encode(m.TaskResult(b"t" * 16, [entry], 123))
    msg, _ = codec.decode(frame[4:])
    return msg.entries[0]


def load(entry: m.InlineValue) -> object:
    assert type(entry) is m.InlineValue
    return v.loads(entry.metadata, entry.inband, entry.buffers)


# --------------------------------------------------------------------------- inline entries


@pytest.mark.parametrize("value", [None, True, 7, 2.5, 1 + 2j, "text", b"\x00bytes"])
def test_plain_values_go_through_plain_pickle_and_come_back_equal(value: object) -> None:
    ser = v.serialize(value)
    assert ser.buffers == [] and ser.refs == ()
    assert pickle.loads(ser.inband) == value  # nothing cloudpickle-specific in there
    assert load(through_the_wire(ser.inline_entry())) == value


def test_an_inline_entry_is_the_kind_the_metadata_the_pickle_and_the_buffers() -> None:
    ser = v.serialize({"a": [1, 2, 3]})
    entry = ser.inline_entry()
    assert type(entry) is m.InlineValue and entry.metadata == b"" and isinstance(entry.inband, bytes)
    assert entry.buffers == [] and not entry.is_error
    assert load(through_the_wire(entry)) == {"a": [1, 2, 3]}


def test_a_numpy_array_travels_out_of_band_and_its_size_counts_the_buffer() -> None:
    array = np.arange(1000, dtype=np.float64)
    ser = v.serialize(array)
    assert len(ser.buffers) == 1  # the 8000 bytes are not copied into the pickle stream
    assert len(ser.inband) < 1000
    assert ser.size == len(ser.inband) + 8000
    entry = ser.inline_entry()
    assert [type(b) for b in entry.buffers] == [bytes]  # buffers as bytes: msgpack can carry them
    back = load(through_the_wire(entry))
    np.testing.assert_array_equal(back, array)


def test_local_functions_travel_by_value() -> None:
    offset = 40

    def add(x: int) -> int:
        return x + offset

    assert load(through_the_wire(v.serialize(add).inline_entry()))(2) == 42


def test_serialize_collects_the_refs_inside_a_value() -> None:
    ref = ObjectRef(b"r" * 16, "127.0.0.1:1")  # no runtime in this process: counts nothing
    other = ObjectRef(b"s" * 16, "127.0.0.1:2")
    ser = v.serialize({"x": [ref, other], "y": ref})
    assert sorted(r.id for r in ser.refs) == [ref.id, other.id]  # pickle writes ``ref`` once
    back = load(ser.inline_entry())
    assert back["x"][0] == ref and back["x"][0].owner == "127.0.0.1:1" and back["y"] == ref
    assert v.serialize(ref).refs == [ref]
    assert v.serialize([1, 2]).refs == []


def test_a_value_that_cannot_travel_says_what_it_was_and_why() -> None:
    with pytest.raises(TypeError, match=r"could not serialize a value of type dict .*hold locks"):
        v.serialize({"lock": threading.Lock()})


# ---------------------------------------------------------------------------- error entries


def test_an_error_entry_raises_its_exception_on_load() -> None:
    entry = through_the_wire(v.serialize_error(ValueError("bad input")))
    assert type(entry) is m.InlineValue and entry.metadata == v.ERROR and entry.is_error
    with pytest.raises(ValueError, match="bad input"):
        load(entry)


def test_an_error_entry_keeps_a_task_errors_traceback_and_cause() -> None:
    error = TaskError("f", "Traceback: line 3", KeyError("k"))
    with pytest.raises(TaskError) as excinfo:
        load(v.serialize_error(error))
    assert excinfo.value.function_name == "f" and "line 3" in excinfo.value.traceback_str
    assert isinstance(excinfo.value.cause, KeyError)


class HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def test_an_exception_that_cannot_be_pickled_is_replaced_by_a_task_error_with_its_message() -> None:
    entry = v.serialize_error(HoldsALock("the disk is on fire"))
    with pytest.raises(TaskError, match="the disk is on fire") as excinfo:
        load(entry)
    assert excinfo.value.cause is None


def test_a_value_entry_is_not_an_error_entry() -> None:
    exc = ValueError("returned, not raised")
    assert load(v.serialize(exc).inline_entry()).args == ("returned, not raised",)


# -------------------------------------------------------------------------- argument markers


def test_dep_markers_are_replaced_by_the_values_in_args_and_kwargs() -> None:
    args = (1, v.Dep(1), "x")
    kwargs = {"a": v.Dep(0), "b": 2}
    assert v.fill_deps(args, kwargs, ["zero", "one"]) == ((1, "one", "x"), {"a": "zero", "b": 2})


def test_dep_markers_survive_pickling_with_their_index() -> None:
    args, kwargs = pickle.loads(pickle.dumps(((v.Dep(3),), {"k": v.Dep(0)})))
    assert v.fill_deps(args, kwargs, ["a", "b", "c", "d"]) == (("d",), {"k": "a"})


def test_without_deps_the_arguments_are_left_as_they_are() -> None:
    args, kwargs = (1, 2), {"x": 3}
    assert v.fill_deps(args, kwargs, []) == (args, kwargs)


def test_only_top_level_markers_are_replaced() -> None:
    nested = [v.Dep(0)]
    args, _ = v.fill_deps((nested,), {}, ["value"])
    assert args[0] is nested and type(args[0][0]) is v.Dep  # nested refs travel as refs


def test_empty_args_unpickle_to_no_arguments() -> None:
    assert pickle.loads(v.EMPTY_ARGS) == ((), {})
