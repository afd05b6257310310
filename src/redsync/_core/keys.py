"""Key naming.

Every key of one primitive instance has the form ``<prefix>:{<tag>}:<part>``.
The part between braces is a Redis Cluster hash tag, so all keys of one
semaphore or event live in the same slot and every multi-key script or
transaction stays on one node.  The tag is the user's name with ``%``, ``{``
and ``}`` percent-encoded: the encoding is reversible (two names never share
a tag) and the tag never contains a brace, so a name like ``a}b{c`` cannot
move the hash tag.  Whatever the prefix contains, the varying suffix always
follows the closing brace, so all keys of one primitive still hash alike.
"""

from __future__ import annotations


def tag(name: str) -> str:
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class KeySpace:
    """The key names of one primitive instance."""

    __slots__ = ("base",)

    def __init__(self, prefix: str, name: str) -> None:
        self.base = f"{prefix}:{{{tag(name)}}}"

    def key(self, part: str) -> str:
        return f"{self.base}:{part}"
