"""Frames and the msgpack codec: message objects to bytes and back, with no I/O.

A frame is a 4-byte little-endian length and a msgpack array ``[tag, request_id, *fields]``;
a message inside it (in a field, a list, a reply) is a msgpack extension (``EXT_MESSAGE``).
``request_id`` is 0 for one-way messages; a reply carries the id of its request. A length
with ``RAW_FLAG`` set starts a raw frame (object chunks, see :mod:`cluster.wire.connection`).

Owns: the codec of every type in :mod:`cluster.wire.messages`. Imports: messages, errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from operator import attrgetter
from typing import Any, NoReturn

import attrs
import msgpack

from cluster.errors import ProtocolError
from cluster.wire import messages as m

MAX_FRAME = 1 << 30
# A length prefix with this bit set starts a *raw* frame: [4-byte header size][msgpack
# [request_id, n]][n bytes of payload]. Used for object chunks: the payload is sent straight
# from the store's mapping and received straight into the destination's (request_into).
RAW_FLAG = 1 << 31
# A message inside a message (a field, an element of a list, a reply's value) travels as the
# array [marker, *fields], the marker a msgpack extension of this code holding the tag.
EXT_MESSAGE = 1


@attrs.frozen
class _Codec:
    cls: type[m.Message]
    make: Callable[..., m.Message]  # cls itself: what builds a message from its fields
    get_fields: Callable[[m.Message], tuple[Any, ...]]
    marker: msgpack.ExtType  # starts the array of one nested inside another message


def _make_codec(cls: type[m.Message]) -> _Codec:
    names = [f.name for f in attrs.fields(cls)]
    if not names:
        getter: Callable[[m.Message], tuple[Any, ...]] = lambda msg: ()  # noqa: E731
    elif len(names) == 1:
        one = attrgetter(names[0])
        getter = lambda msg: (one(msg),)  # noqa: E731
    else:
        getter = attrgetter(*names)
    return _Codec(cls, cls, getter, msgpack.ExtType(EXT_MESSAGE, cls.TAG.to_bytes(2, "little")))


_CODECS: dict[type, _Codec] = {}
_BY_TAG: dict[int, _Codec] = {}


def _codec_of(cls: type) -> _Codec:
    """The codec of a message type; types that plugins declare later are added on first use."""
    codec = _CODECS.get(cls)
    if codec is None:
        message_type = m.MESSAGE_TYPES.get(getattr(cls, "TAG", -1))  # -1: no message's tag
        if message_type is None or message_type is not cls:
            raise TypeError(f"a {cls.__name__} cannot travel on the wire (not a message type)")
        codec = _CODECS[cls] = _BY_TAG[message_type.TAG] = _make_codec(message_type)
    return codec


def _codec_by_tag(tag: int) -> _Codec:
    codec = _BY_TAG.get(tag)
    if codec is None:
        codec = _codec_of(m.MESSAGE_TYPES[tag])  # KeyError: an unknown tag
    return codec


for _cls in list(m.MESSAGE_TYPES.values()):
    _codec_of(_cls)


def _nested(msg: m.Message) -> list[Any]:
    """``default`` of the packer: a message found inside another one becomes a marked array."""
    codec = _CODECS.get(type(msg)) or _codec_of(type(msg))
    return [codec.marker, *codec.get_fields(msg)]


@attrs.frozen
class _UnknownTag:
    tag: int


def _marker(code: int, data: bytes) -> _Codec | _UnknownTag:
    """``ext_hook`` of the unpacker: the codec of the message whose array this starts."""
    if code != EXT_MESSAGE:
        raise ValueError(f"unknown extension type {code}")
    tag = int.from_bytes(data, "little")
    codec = _BY_TAG.get(tag)
    if codec is None:
        if tag not in m.MESSAGE_TYPES:
            return _UnknownTag(tag)  # a type of a plugin not installed here
        codec = _codec_of(m.MESSAGE_TYPES[tag])
    return codec


def _unnested(items: list[Any]) -> m.Message | m.UnknownMessage | list[Any]:
    """``list_hook`` of the unpacker: rebuild a marked array as its message."""
    if items:
        head = items[0]
        if type(head) is _Codec:
            return head.make(*items[1:])
        if type(head) is _UnknownTag:
            return m.UnknownMessage(head.tag, items[1:])
    return items


def _refuse_nested(code: int, data: bytes) -> NoReturn:
    raise ValueError("a nested message where none may be (the handshake)")


_packers = threading.local()  # a packer with a Python ``default`` is not thread-safe: one per thread


def packb(obj: Any) -> bytes:
    pack: Callable[[Any], bytes]
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True, autoreset=True, default=_nested).pack
    return pack(obj)


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(data, use_list=True, raw=False, strict_map_key=False, ext_hook=_marker,
                           list_hook=_unnested)


def encode(msg: m.Message, request_id: int = 0) -> bytes:
    """One frame: length prefix and the msgpack body."""
    codec = _CODECS.get(type(msg)) or _codec_of(type(msg))
    body = packb([msg.TAG, request_id, *codec.get_fields(msg)])
    return len(body).to_bytes(4, "little") + body


def decode(body: bytes | bytearray | memoryview, *, allowed: frozenset[int] | None = None) -> tuple[m.Message, int]:
    """Decode a frame body into (message, request_id); ``allowed``: the only tags accepted,
    with no message nested inside (what an unauthenticated peer may send)."""
    try:
        if allowed is None:
            raw = msgpack.unpackb(body, use_list=True, raw=False, strict_map_key=False,
                                  ext_hook=_marker, list_hook=_unnested)
        else:
            raw = msgpack.unpackb(body, use_list=True, raw=False, strict_map_key=False,
                                  ext_hook=_refuse_nested)
        tag, request_id, *fields = raw
        codec = _codec_by_tag(tag)
    except Exception as exc:
        raise ProtocolError(f"received a malformed frame ({exc.__class__.__name__}: {exc})") from None
    if allowed is not None and tag not in allowed:
        raise ProtocolError(f"received message {codec.cls.__name__} where it is not allowed")
    try:
        return codec.make(*fields), request_id
    except TypeError as exc:
        raise ProtocolError(f"received a malformed {codec.cls.__name__}: {exc}") from None
