"""Reading what Redis holds for the semaphore and the event, by the documented key schema.

Independent of the library's code: key names follow ARCHITECTURE.md
(``<prefix>:{<tag>}:<part>``, the tag being the name with ``%``, ``{`` and
``}`` percent-encoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EventLists",
    "Keys",
    "TokenPicture",
    "event_lists",
    "holder_members",
    "instance_tokens",
    "pending_signals",
    "to_master",
    "token_picture",
]


async def to_master(client: Any) -> None:
    """Make a Sentinel client's next commands go to the current master.

    redis-py moves a Sentinel client's connections only when a write fails
    (READONLY) or a connection breaks, so a client that only reads would keep
    reading a demoted master (now a replica) after a failover.  Asking the
    sentinels again drops the idle connections when the master changed.
    """
    pool = getattr(client, "connection_pool", None)
    refresh = getattr(pool, "get_master_address", None)
    if refresh is not None and getattr(pool, "is_master", False):
        await refresh()


def _tag(name: str) -> str:
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Keys:
    def __init__(
        self,
        sem_name: str,
        event_name: str,
        sem_prefix: str = "redsync:semaphore",
        event_prefix: str = "redsync:event",
    ) -> None:
        self.sem_base = f"{sem_prefix}:{{{_tag(sem_name)}}}"
        self.event_base = f"{event_prefix}:{{{_tag(event_name)}}}"

    def sem(self, part: str) -> str:
        return f"{self.sem_base}:{part}"

    def event(self, part: str) -> str:
        return f"{self.event_base}:{part}"


@dataclass
class TokenPicture:
    meta: dict[str, str] = field(default_factory=dict)
    pool: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    #: slot key -> tokens in it (marker removed)
    slots: dict[str, list[str]] = field(default_factory=dict)
    #: slot keys whose first item is not the empty marker
    bad_markers: list[str] = field(default_factory=list)

    @property
    def held(self) -> list[str]:
        return [t for tokens in self.slots.values() for t in tokens]

    @property
    def every(self) -> list[str]:
        return [*self.pool, *self.held]

    def judge(self, count: int) -> dict[str, Any]:
        """Permits lost / duplicated / of a foreign generation, against ``count``."""
        gen = self.meta.get("gen", "")
        every = self.every
        ours = [t for t in every if gen and t.rsplit(":", 1)[0] == gen]
        distinct = set(ours)
        return {
            "exists": bool(self.meta),
            "count_in_meta": int(self.meta["count"]) if "count" in self.meta else None,
            "tokens": len(every),
            "free": len(self.pool),
            "held": len(self.held),
            "lost": max(0, count - len(distinct)),
            "duplicated": (len(ours) - len(distinct)) + max(0, len(distinct) - count),
            "foreign": len(every) - len(ours),
            "bad_markers": len(self.bad_markers),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "pool": self.pool,
            "members": self.members,
            "slots": {k: v for k, v in self.slots.items() if v},
            "bad_markers": self.bad_markers,
        }


#: Reads the whole semaphore in one atomic step.  KEYS: meta, pool, holders,
#: handed, then slot keys found by SCAN; the slot of every registered member is
#: read as well (same hash slot as the declared keys, so this also runs on a
#: cluster node).  Returns {meta, pool, members, handed, {slot key, items}...}.
_PICTURE_LUA = """
local out = {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
local members = redis.call('ZRANGE', KEYS[3], 0, -1)
out[3] = members
out[4] = redis.call('HGETALL', KEYS[4])
local seen = {}
local function slot(key)
  if not seen[key] then
    seen[key] = true
    out[#out + 1] = {key, redis.call('LRANGE', key, 0, -1)}
  end
end
for i = 5, #KEYS do slot(KEYS[i]) end
for _, m in ipairs(members) do slot(ARGV[1] .. m) end
return out
"""


async def token_picture(client: Any, keys: Keys) -> TokenPicture:
    """Where every token is, read atomically (one script) so that a token moving
    while it is read can neither be missed nor seen twice."""
    await to_master(client)
    found = [_text(key) async for key in client.scan_iter(match=keys.sem("slot:*"), count=1000)]
    names = [
        *(keys.sem(part) for part in ("meta", "pool", "holders", "handed")),
        *sorted(set(found)),
    ]
    reply = await client.eval(_PICTURE_LUA, len(names), *names, keys.sem("slot:"))
    pic = TokenPicture()
    flat_meta = [_text(v) for v in reply[0]]
    pic.meta = dict(zip(flat_meta[::2], flat_meta[1::2]))
    pic.pool = [_text(t) for t in reply[1]]
    pic.members = [_text(m) for m in reply[2]]
    for key_raw, raw_items in reply[4:]:
        key = _text(key_raw)
        items = [_text(t) for t in raw_items]
        if not items:
            continue
        if items[0] != "":
            pic.bad_markers.append(key)
            pic.slots[key] = items
        else:
            pic.slots[key] = items[1:]
    # A token handed to a queued waiter is held in its member's slot.
    flat_handed = [_text(v) for v in reply[3]]
    for member, token in zip(flat_handed[::2], flat_handed[1::2]):
        pic.slots.setdefault(keys.sem(f"slot:{member}"), []).append(token)
    return pic


async def instance_tokens(client: Any, keys: Keys, instance: str) -> int:
    """Permit tokens in the slots of one semaphore instance (registered or not)."""
    await to_master(client)
    slot_keys = {
        keys.sem(f"slot:{m}")
        for m in await holder_members(client, keys)
        if m.rsplit(".", 1)[0] == instance
    }
    async for key in client.scan_iter(match=keys.sem(f"slot:{instance}.*"), count=1000):
        slot_keys.add(_text(key))
    tokens = 0
    for key in slot_keys:
        items = await client.lrange(key, 0, -1)
        tokens += sum(1 for item in items if _text(item) != "")
    handed = await client.hkeys(keys.sem("handed"))
    tokens += sum(1 for m in handed if _text(m).rsplit(".", 1)[0] == instance)
    return tokens


async def holder_members(client: Any, keys: Keys) -> list[str]:
    await to_master(client)
    return [_text(m) for m in await client.zrange(keys.sem("holders"), 0, -1)]


@dataclass
class EventLists:
    """The event's per-lane lists, by the instance that owns them."""

    #: inbox key -> entries (a signal moved to a waiter, not yet acknowledged)
    inboxes: dict[str, list[str]] = field(default_factory=dict)
    #: acknowledgement record key -> entries (the signal a lane took last)
    acked: dict[str, list[str]] = field(default_factory=dict)
    #: inbox keys registered for recovery (the ``inboxes`` sorted set)
    registered: set[str] = field(default_factory=set)
    #: queue member -> signal handed to it, not yet delivered (``handed`` hash)
    handed: dict[str, str] = field(default_factory=dict)
    #: queue member -> "<wait id> <signal>": the signal delivered last (``acked`` hash)
    delivered: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def instance_of(key: str) -> str:
        """``...:inbox:<instance>.<n>`` -> ``<instance>``."""
        return key.rsplit(":", 1)[-1].rsplit(".", 1)[0]


async def event_lists(client: Any, keys: Keys) -> EventLists:
    await to_master(client)
    out = EventLists()
    for part, target in (("inbox:*", out.inboxes), ("acked:*", out.acked)):
        async for key in client.scan_iter(match=keys.event(part), count=1000):
            name = _text(key)
            entries = [_text(v) for v in await client.lrange(name, 0, -1)]
            if entries:
                target[name] = entries
    out.registered = {_text(m) for m in await client.zrange(keys.event("inboxes"), 0, -1)}
    for part, target in (("handed", out.handed), ("acked", out.delivered)):
        found = await client.hgetall(keys.event(part))
        target.update({_text(k): _text(v) for k, v in found.items()})
    return out


async def pending_signals(client: Any, keys: Keys) -> int:
    await to_master(client)
    return int(await client.llen(keys.event("signals")))
