"""Frames and the msgpack codec: message objects to bytes and back, with no I/O.

A frame is a 4-byte little-endian length and a msgpack array ``[tag, request_id, *fields]``.
``request_id`` is 0 for one-way messages; a reply carries the id of its request. A length
with ``RAW_FLAG`` set starts a raw frame (object chunks, see :mod:`cluster.wire.connection`).

Owns: the codec of every type in :mod:`cluster.wire.messages`. Imports: messages, errors.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import attrs
import msgpack

from cluster.errors import ProtocolError
from cluster.wire import messages as m

MAX_FRAME = 1 << 30
# A length prefix with this bit set starts a *raw* frame: [4-byte header size][msgpack
# [request_id, n]][n bytes of payload]. Used for object chunks: the payload is sent straight
# from the store's mapping and received straight into the destination's (request_into).
RAW_FLAG = 1 << 31
packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
unpackb = msgpack.unpackb


@attrs.frozen
class _Codec:
    cls: type
    get_fields: Callable[[Any], tuple]
    nested: dict[int, Callable[[Any], Any]]  # field index -> decoder


def _make_codec(cls: type) -> _Codec:
    names = [f.name for f in attrs.fields(cls)]
    if not names:
        getter: Callable[[Any], tuple] = lambda msg: ()  # noqa: E731
    elif len(names) == 1:
        one = attrgetter(names[0])
        getter = lambda msg: (one(msg),)  # noqa: E731
    else:
        getter = attrgetter(*names)
    nested: dict[int, Callable[[Any], Any]] = {}
    for field_name, elem_cls in cls.NESTED.items():
        index = names.index(field_name)
        nested[index] = _list_decoder(elem_cls)
    return _Codec(cls, getter, nested)


def _list_decoder(elem_cls: type) -> Callable[[list], list]:
    def decode(items: list) -> list:
        return [elem_cls(*item[2:]) for item in items]

    return decode


_CODECS: dict[type, _Codec] = {}
_BY_TAG: dict[int, _Codec] = {}


def _codec_for(cls: type) -> _Codec:
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _BY_TAG[cls.TAG] = _make_codec(cls)
    return codec


for _cls in m.MESSAGE_TYPES.values():
    _codec_for(_cls)


def _to_wire(msg: Any, request_id: int) -> list:
    codec = _CODECS[type(msg)]
    fields = list(codec.get_fields(msg))
    for index in codec.nested:
        fields[index] = [_to_wire(item, 0) for item in fields[index]]
    return [msg.TAG, request_id, *fields]


def encode(msg: Any, request_id: int = 0) -> bytes:
    """One frame: length prefix and the msgpack body."""
    body = packb(_to_wire(msg, request_id))
    return len(body).to_bytes(4, "little") + body


def decode(body: bytes | bytearray | memoryview, *, allowed: frozenset[int] | None = None) -> tuple[Any, int]:
    """Decode a frame body into (message, request_id)."""
    try:
        raw = unpackb(body, use_list=True, raw=False, strict_map_key=False)
        tag, request_id, *fields = raw
        codec = _BY_TAG[tag]
    except Exception as exc:
        raise ProtocolError(f"received a malformed frame ({exc.__class__.__name__}: {exc})") from None
    if allowed is not None and tag not in allowed:
        raise ProtocolError(f"received message {codec.cls.__name__} where it is not allowed")
    for index, dec in codec.nested.items():
        fields[index] = dec(fields[index])
    try:
        return codec.cls(*fields), request_id
    except TypeError as exc:
        raise ProtocolError(f"received a malformed {codec.cls.__name__}: {exc}") from None

