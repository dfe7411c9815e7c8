"""Requests checked before anything is computed: packed arrays, JSON bodies, `X-Meta`.

The packed format and its constants are `nninteractive-client`'s own
(`nnInteractive.inference.remote.serialization`): magic, wire version, codec, dtype, shape,
blosc2 chunks. Its header is read here first, so a shape or dtype out of range is refused
before any memory is taken for it; then the client's `unpack_array` decodes. Every refusal
is a `RequestError`: an HTTP status and one line.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import blosc2
import numpy as np
from nnInteractive.inference.remote.serialization import MAGIC, VERSION, pack_array, unpack_array

MAX_SIDE = 4096
"""Largest voxel count along one axis of an uploaded array."""


GUARD_BYTES = 4096
"""Owned memory on each side of an answer handed to blosc2: its compression of an answer
that was a fresh copy still crashed the server, reading unmapped memory (a segfault in
memcpy at the 6th click of `benchmarks/serve.py`), probably past the end of the small
buffer; with this guard 20 clicks ran without a crash."""


def pack_answer(part: np.ndarray) -> bytes:
    """The client's packed form of `part`, no filter, compressed from a copy with
    `GUARD_BYTES` of owned memory around it."""
    guarded = np.zeros(part.nbytes + 2 * GUARD_BYTES, np.uint8)
    inner = guarded[GUARD_BYTES:GUARD_BYTES + part.nbytes].view(part.dtype).reshape(part.shape)
    inner[...] = part
    return pack_array(inner, filters=[blosc2.Filter.NOFILTER])


class RequestError(Exception):
    """A request the server refuses: `status` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def packed_header(buf: bytes, what: str) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) a packed array declares, checked as far as the header goes."""
    if len(buf) < 8:
        raise RequestError(f"{what}: the body is no packed array ({len(buf)} bytes)")
    magic, version, _codec, ndim, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC:
        raise RequestError(f"{what}: bad magic {magic!r}; send an array packed by "
                         "nninteractive-client")
    if version != VERSION:
        raise RequestError(f"{what}: wire version {version}; this server reads version {VERSION}")
    if len(buf) < 8 + name_len + 8 * ndim:
        raise RequestError(f"{what}: the packed header is cut short")
    try:
        dtype = np.dtype(buf[8:8 + name_len].decode("ascii"))
    except (UnicodeDecodeError, TypeError) as exc:
        raise RequestError(f"{what}: unreadable dtype in the packed header ({exc})") from None
    shape = struct.unpack_from(f"<{ndim}q", buf, 8 + name_len)
    return dtype, tuple(int(s) for s in shape)


def unpack(buf: bytes, what: str, ndims: tuple[int, ...], kinds: str,
           max_bytes: int) -> np.ndarray:
    """A packed array of `ndims` dimensions, dtype kind in `kinds` ("f", "iu", "biu"),
    every side in 1..`MAX_SIDE`, at most `max_bytes` when unpacked."""
    dtype, shape = packed_header(buf, what)
    if len(shape) not in ndims:
        raise RequestError(f"{what}: a {len(shape)}-D array; send {' or '.join(map(str, ndims))}-D")
    if dtype.kind not in kinds or dtype.itemsize > 8:
        raise RequestError(f"{what}: dtype {dtype} not accepted here")
    if not all(1 <= s <= MAX_SIDE for s in shape):
        raise RequestError(f"{what}: shape {list(shape)} out of range (1 to {MAX_SIDE} a side)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise RequestError(f"{what}: {nbytes} bytes unpacked, over the server's limit of "
                         f"{max_bytes}", status=413)
    try:
        return unpack_array(buf)
    except (ValueError, struct.error, RuntimeError) as exc:
        raise RequestError(f"{what}: corrupt packed array ({exc})") from None


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object ({} for an empty body)."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"{what}: the body is no JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(f"{what}: the body must be a JSON object")
    return data


def meta_header(value: str | None, what: str) -> dict[str, Any]:
    """The `X-Meta` header (JSON object; {} when absent)."""
    return json_object((value or "").encode(), f"{what}: X-Meta")


def flag(data: dict[str, Any], key: str, what: str, default: bool | None = None) -> bool:
    """A boolean field (required when `default` is None)."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{what}: {key} must be true or false")
    return value


def coordinates(value: Any, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """Three numbers, rounded to the voxel, inside an image of `shape`."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) for v in value)):
        raise RequestError(f"{what}: coordinates must be three numbers (voxel indices)")
    index = tuple(round(v) for v in value)
    if not all(0 <= i < s for i, s in zip(index, shape, strict=True)):
        raise RequestError(f"{what}: coordinates {list(index)} outside the image of "
                         f"{list(shape)} voxels")
    return index  # type: ignore[return-value]


def box(value: Any, shape: tuple[int, ...], what: str, field: str = "interaction_bbox"
        ) -> list[int]:
    """The low corner of an `[[low, high]] * 3` box (high exclusive) inside `shape`."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(p, list) and len(p) == 2
                       and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
                       for p in value)):
        raise RequestError(f"{what}: {field} must be [[low, high]] * 3 integers")
    if not all(0 <= low < high <= s for (low, high), s in zip(value, shape, strict=True)):
        raise RequestError(f"{what}: {field} {value} outside the image of "
                         f"{list(shape)} voxels")
    return [low for low, _high in value]
