"""A RESP2/RESP3 reply parser over a byte buffer.

Used where redis-py's own parser would cost most of the client's CPU: it
awaits the stream several times per element of every reply, while this one
parses whatever one read brought, synchronously.  Values are what redis-py
returns with ``disable_decoding=True``: bulk strings as bytes, integers as
int, doubles as float, booleans as bool, maps as dicts, sets as lists, errors
as exception values (made by ``error``); a push frame is a :class:`Push`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis import exceptions as rex

__all__ = ["Incomplete", "Push", "parse"]


class Incomplete(Exception):
    """The buffer ends inside a frame: read more, then parse again from the start."""


class Push(list):  # type: ignore[type-arg]
    """A RESP3 push frame (``>``): out-of-band, not the reply to a command."""


def parse(
    buf: bytes,
    pos: int,
    error: Callable[[str], BaseException] = rex.ResponseError,
) -> tuple[Any, int]:
    """The frame of ``buf`` at ``pos`` and the position after it; raises
    :class:`Incomplete` if ``buf`` ends first."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind = buf[pos]
    line = buf[pos + 1 : end]
    pos = end + 2
    if kind in (0x24, 0x3D, 0x21):  # $ bulk, = verbatim, ! blob error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        data = buf[pos : pos + size]
        pos += size + 2
        if kind == 0x21:
            return error(data.decode("utf-8", "replace")), pos
        return (data[4:] if kind == 0x3D else data), pos
    if kind in (0x2A, 0x3E, 0x7E):  # * array, > push, ~ set
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = Push() if kind == 0x3E else []
        for _ in range(count):
            item, pos = parse(buf, pos, error)
            items.append(item)
        return items, pos
    if kind in (0x25, 0x7C):  # % map, | attribute (which precedes the real frame)
        mapping: dict[Any, Any] = {}
        for _ in range(int(line)):
            key, pos = parse(buf, pos, error)
            mapping[key], pos = parse(buf, pos, error)
        return (mapping, pos) if kind == 0x25 else parse(buf, pos, error)
    if kind == 0x2B:  # + simple string
        return line, pos
    if kind == 0x2D:  # - error
        return error(line.decode("utf-8", "replace")), pos
    if kind in (0x3A, 0x28):  # : integer, ( big number
        return int(line), pos
    if kind == 0x2C:  # , double
        return float(line), pos
    if kind == 0x23:  # # boolean
        return line == b"t", pos
    if kind == 0x5F:  # _ null
        return None, pos
    raise rex.InvalidResponse(f"protocol error: {buf[pos - len(line) - 3 : pos]!r}")
