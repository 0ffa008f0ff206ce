"""On-disk layout of a sealed object file (header packing and validation).

A sealed object file is laid out as follows (all integers little-endian)::

    offset  size  field
    0       8     magic            b"CLUSTOBJ"
    8       2     version          FORMAT_VERSION (1)
    10      2     flags            reserved, written as 0, ignored on read
    12      4     num_buffers      n
    16      8     total_size       size of the whole file in bytes
    24      8     metadata_offset
    32      8     metadata_length
    40      8     inband_offset
    48      8     inband_length
    56      16*n  buffer table     n x (offset: u64, length: u64)
    ...           metadata         starts right after the buffer table
    ...           inband           starts right after metadata
    ...           buffers          each starts at a multiple of BUFFER_ALIGNMENT

Parts never overlap and appear in that order; the file ends exactly where the
last part ends (``total_size``).  Padding between parts is zero bytes.  A reader
rejects any file whose magic, version or sizes disagree with this.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # any object supporting the buffer protocol (bytes, memoryview, mmap)
    from _typeshed import ReadableBuffer

MAGIC = b"CLUSTOBJ"
FORMAT_VERSION = 1
BUFFER_ALIGNMENT = 64

_FIXED = struct.Struct("<8sHHIQQQQQ")
_ENTRY_SIZE = 16
FIXED_HEADER_SIZE = _FIXED.size  # 56

#: A sanity bound on the buffer count so a corrupt header cannot make us
#: build a gigantic struct format string.
_MAX_BUFFERS = 1 << 24


def _align_up(value: int, alignment: int = BUFFER_ALIGNMENT) -> int:
    """Round ``value`` up to the next multiple of ``alignment``."""
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part of an object lives inside its file."""

    total_size: int
    metadata_offset: int
    metadata_length: int
    inband_offset: int
    inband_length: int
    buffers: tuple[tuple[int, int], ...]  # (offset, length) per buffer

    @property
    def header_size(self) -> int:
        """Size of the fixed header plus the buffer table."""
        return FIXED_HEADER_SIZE + _ENTRY_SIZE * len(self.buffers)

    def pack_header(self) -> bytes:
        """Serialize the header and buffer table."""
        fixed = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            len(self.buffers),
            self.total_size,
            self.metadata_offset,
            self.metadata_length,
            self.inband_offset,
            self.inband_length,
        )
        if not self.buffers:
            return fixed
        flat = [value for entry in self.buffers for value in entry]
        return fixed + struct.pack(f"<{len(flat)}Q", *flat)


def plan_layout(metadata_length: int, inband_length: int, buffer_lengths: Sequence[int]) -> Layout:
    """Compute the layout of a new object from the sizes of its parts."""
    header_size = FIXED_HEADER_SIZE + _ENTRY_SIZE * len(buffer_lengths)
    metadata_offset = header_size
    inband_offset = metadata_offset + metadata_length
    end = inband_offset + inband_length
    entries = []
    for length in buffer_lengths:
        offset = _align_up(end)
        entries.append((offset, length))
        end = offset + length
    return Layout(
        total_size=end,
        metadata_offset=metadata_offset,
        metadata_length=metadata_length,
        inband_offset=inband_offset,
        inband_length=inband_length,
        buffers=tuple(entries),
    )


class HeaderError(Exception):
    """Internal: the bytes do not form a valid object header (the reason is the message)."""


def parse_header(data: ReadableBuffer, file_size: int) -> Layout:
    """Parse and validate the header of an object file of ``file_size`` bytes.

    ``data`` must expose the file's bytes (at least its header).  Raises
    :class:`HeaderError` with a human-readable reason if the magic, version or
    any size/offset is inconsistent; callers turn that into a
    :class:`~cluster_store.errors.CorruptObjectError` naming the file.
    """
    if file_size < FIXED_HEADER_SIZE:
        raise HeaderError(
            f"it is {file_size} bytes, smaller than the {FIXED_HEADER_SIZE}-byte header"
        )
    (
        magic,
        version,
        _flags,
        num_buffers,
        total_size,
        metadata_offset,
        metadata_length,
        inband_offset,
        inband_length,
    ) = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise HeaderError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise HeaderError(
            f"format version {version} is not supported (this reader understands {FORMAT_VERSION})"
        )
    if num_buffers > _MAX_BUFFERS:
        raise HeaderError(f"implausible buffer count {num_buffers}")
    header_size = FIXED_HEADER_SIZE + _ENTRY_SIZE * num_buffers
    if header_size > file_size:
        raise HeaderError(
            f"header declares {num_buffers} buffers but the file is only {file_size} bytes"
        )
    if total_size != file_size:
        raise HeaderError(
            f"header says the object is {total_size} bytes but the file has {file_size} bytes"
        )
    if metadata_offset < header_size:
        raise HeaderError("metadata overlaps the header")
    end = metadata_offset + metadata_length
    if inband_offset < end:
        raise HeaderError("inband data overlaps the metadata")
    end = inband_offset + inband_length
    buffers: tuple[tuple[int, int], ...] = ()
    if num_buffers:
        flat = struct.unpack_from(f"<{2 * num_buffers}Q", data, FIXED_HEADER_SIZE)
        buffers = tuple(zip(flat[0::2], flat[1::2], strict=True))
        for index, (offset, length) in enumerate(buffers):
            if offset % BUFFER_ALIGNMENT:
                raise HeaderError(
                    f"buffer {index} offset {offset} is not {BUFFER_ALIGNMENT}-byte aligned"
                )
            if offset < end:
                raise HeaderError(f"buffer {index} overlaps the preceding part")
            end = offset + length
    if end != file_size:
        raise HeaderError(f"the parts end at byte {end} but the file is {file_size} bytes")
    return Layout(
        total_size=total_size,
        metadata_offset=metadata_offset,
        metadata_length=metadata_length,
        inband_offset=inband_offset,
        inband_length=inband_length,
        buffers=buffers,
    )
