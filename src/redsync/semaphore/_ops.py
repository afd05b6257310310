"""The state changes of a semaphore, in two interchangeable backends.

:class:`LuaOps` runs each change as one Lua script (the default: one round
trip, atomic).  :class:`TxOps` performs the same changes with WATCH + MULTI/EXEC
and a retry loop, sending no EVAL/EVALSHA/FCALL at all, for deployments where
scripting is disabled.  Both read the server clock (TIME) for leases and take
every key name from :class:`~redsync._keys.KeySpace`; the Lua files receive
all names through KEYS.  See ARCHITECTURE.md for the invariants they keep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.asyncio.connection import AbstractConnection

from .._core.keys import KeySpace
from .._core.link import Command, Link, Script, now_ms, text

R = TypeVar("R")

SCRIPTS = {
    name: Script("redsync.semaphore", name)
    for name in (
        *("init", "release", "renew", "reclaim", "refill", "deregister"),
        *("enqueue", "dequeue"),
    )
}


#: A release's answer: 1 released, 0 not held, -1 gone, -2 another generation;
#: and the notice of a hand-off to a waiter of the releasing instance, which
#: was not published (the releaser delivers it), or None.
Released = tuple[int, str | None]


@dataclass
class SlotState:
    member: str
    key: str
    tokens: list[str]
    #: "w<number>": a task waits on this slot as that ticket number ("w": the
    #: number is not known yet; keep its ticket queued), "d": drop its ticket
    #: (a wait ended without an answer), "-": neither.
    mode: str = "-"


@dataclass
class RenewResult:
    status: str  # "ok", "restored" or "stale"
    stale_members: list[str] = field(default_factory=list)
    refill_due: bool = False
    slots: list[list[str]] = field(default_factory=list)
    #: (member, ticket number) of waiting members whose ticket had been
    #: dropped and was queued again.
    requeued: list[tuple[str, str]] = field(default_factory=list)
    #: False when the node has no connection subscribed to the channel the
    #: renewal named: the instance's listener is elsewhere and must move.
    listening: bool = True
    count: int = 0
    gen: str = ""


@dataclass(frozen=True)
class Meta:
    count: int
    gen: str
    strategy: str
    created: bool = False


class SemaphoreOps(Protocol):
    def slot_key(self, member: str) -> str: ...
    async def init(self, count: int, ttl_ms: int, gen: str, strategy: str) -> Meta: ...
    async def meta(self) -> Meta | None: ...
    async def release(self, member: str, token: str, gen: str, ttl_ms: int) -> Released: ...
    async def renew(
        self,
        slots: Sequence[SlotState],
        count: int,
        gen: str,
        strategy: str,
        ttl_ms: int,
        recover_ms: int,
        channel: str = "",
    ) -> RenewResult: ...
    async def reclaim(self, members: Sequence[str], gen: str, ttl_ms: int) -> int: ...
    async def refill(self, members: Sequence[str], count: int, gen: str, ttl_ms: int) -> int: ...
    async def deregister(self, members: Sequence[str]) -> int: ...


class _Base:
    def __init__(self, link: Link, keys: KeySpace) -> None:
        self.link = link
        self.meta_key = keys.key("meta")
        self.pool_key = keys.key("pool")
        self.holders_key = keys.key("holders")
        self.waiters_key = keys.key("waiters")
        self.handed_key = keys.key("handed")
        #: The channel hand-offs are announced on (in the semaphore's slot).
        self.channel = keys.key("wake")
        #: A lock's fence key: its hand-offs then issue the next fence.
        self.fence_key: str | None = None
        self._keys = keys

    def slot_key(self, member: str) -> str:
        return self._keys.key(f"slot:{member}")

    async def meta(self) -> Meta | None:
        count, gen, strategy = await self.link.call(
            "HMGET", self.meta_key, "count", "gen", "strategy"
        )
        if count is None:
            return None
        return Meta(int(count), text(gen), text(strategy) if strategy else "lua")


def _tokens(gen: str, count: int) -> list[str]:
    return [f"{gen}:{i}" for i in range(count)]


def _strings(values: Any) -> list[str]:
    return [text(v) for v in values or []]


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    return list(zip(values[::2], values[1::2]))


def renew_result(reply: Any) -> RenewResult:
    """The renewal script's reply, parsed."""
    status = text(reply[0])
    if status == "stale":
        return RenewResult("stale", count=int(reply[1]), gen=text(reply[2]))
    return RenewResult(
        status,
        stale_members=_strings(reply[1]),
        refill_due=bool(int(reply[2])),
        requeued=_pairs(_strings(reply[3])),
        listening=bool(int(reply[4])),
        slots=[_strings(c) for c in reply[5:]],
    )


class LuaOps(_Base):
    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.link.script(SCRIPTS[name], keys, args)

    async def init(self, count: int, ttl_ms: int, gen: str, strategy: str) -> Meta:
        keys = [self.meta_key, self.pool_key, self.holders_key, self.waiters_key, self.handed_key]
        reply = await self._run("init", keys, [count, ttl_ms, gen, strategy])
        return Meta(int(reply[0]), text(reply[1]), text(reply[2]), bool(int(reply[3])))

    def _shared(self) -> list[str]:
        return [self.meta_key, self.pool_key, self.holders_key, self.waiters_key, self.handed_key]

    async def release(self, member: str, token: str, gen: str, ttl_ms: int) -> Released:
        keys = [
            self.meta_key,
            self.pool_key,
            self.slot_key(member),
            self.holders_key,
            self.waiters_key,
            self.handed_key,
        ]
        if self.fence_key is not None:
            keys.append(self.fence_key)
        mine = member.rpartition(".")[0] + "."
        args = [token, gen, ttl_ms, member, self.channel, mine]
        reply = await self._run("release", keys, args)
        return int(reply[0]), (text(reply[1]) if len(reply) > 1 else None)

    async def enqueue(
        self, member: str, gen: str, ttl_ms: int, channel: str
    ) -> tuple[int, str | None, bool]:
        """Take a permit into ``member``'s slot, or queue it as a waiter (see enqueue.lua).

        Returns ``(1, token, True)``, ``(0, ticket number, listening)`` or
        ``(status < 0, None, True)``; ``listening`` is False when this node
        has no connection subscribed to ``channel`` (the instance's channel).
        """
        keys = [
            self.meta_key,
            self.pool_key,
            self.slot_key(member),
            self.waiters_key,
            self.handed_key,
        ]
        reply = await self._run("enqueue", keys, [member, gen, ttl_ms, channel])
        listening = len(reply) < 3 or bool(int(reply[2]))
        return int(reply[0]), (text(reply[1]) if len(reply) > 1 else None), listening

    async def dequeue(self, member: str) -> str | None:
        """Drop ``member``'s ticket; the token its slot got meanwhile, if any."""
        keys = [self.waiters_key, self.handed_key, self.slot_key(member)]
        reply = await self._run("dequeue", keys, [member])
        return None if reply is None else text(reply)

    async def renew(
        self,
        slots: Sequence[SlotState],
        count: int,
        gen: str,
        strategy: str,
        ttl_ms: int,
        recover_ms: int,
        channel: str = "",
    ) -> RenewResult:
        keys, args = self.renew_call(slots, count, gen, strategy, ttl_ms, recover_ms, channel)
        return renew_result(await self._run("renew", keys, args))

    def renew_call(
        self,
        slots: Sequence[SlotState],
        count: int,
        gen: str,
        strategy: str,
        ttl_ms: int,
        recover_ms: int,
        channel: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the renewal script (sent in shared batches).

        ``channel``: the instance's channel, while it is subscribed: the
        renewal reports whether this node has it (see ``listening``).
        """
        keys = [*self._shared(), *(slot.key for slot in slots)]
        args: list[Any] = [ttl_ms, count, gen, strategy, recover_ms, len(slots), channel]
        for slot in slots:
            args += [slot.member, slot.mode, len(slot.tokens), *slot.tokens]
        return keys, args

    async def reclaim(self, members: Sequence[str], gen: str, ttl_ms: int) -> int:
        keys = [*self._shared(), *map(self.slot_key, members)]
        args = [ttl_ms, gen, len(members), *members, recovery_window_ms(ttl_ms), self.channel]
        return int(await self._run("reclaim", keys, args))

    async def refill(self, members: Sequence[str], count: int, gen: str, ttl_ms: int) -> int:
        keys = [*self._shared(), *map(self.slot_key, members)]
        window = recovery_window_ms(ttl_ms)
        args = [ttl_ms, count, gen, len(members), *members, window, self.channel]
        return int(await self._run("refill", keys, args))

    async def deregister(self, members: Sequence[str]) -> int:
        keys = [self.holders_key, self.waiters_key, self.handed_key, *map(self.slot_key, members)]
        return int(await self._run("deregister", keys, list(members)))


Reader = Callable[[Sequence[Command]], Awaitable[list[Any]]]
#: A transaction body: reads through the reader, returns (writes or None, result).
Body = Callable[[Reader], Awaitable[tuple[list[Command] | None, R]]]


def recovery_window_ms(ttl_ms: int) -> int:
    """How long live instances have to report their permits after a loss."""
    return round(ttl_ms * 0.45)


class TxOps(_Base):
    """The same operations with WATCH + MULTI/EXEC: no server-side scripting."""

    async def _tx(self, watch: Sequence[str], body: Body[R]) -> R:
        while True:
            conn = await self.link.borrow()
            try:
                await self.link.run(conn, [("WATCH", *watch)])

                async def reader(
                    commands: Sequence[Command], conn: AbstractConnection = conn
                ) -> list[Any]:
                    return await self.link.run(conn, commands)

                try:
                    writes, result = await body(reader)
                except BaseException:
                    await self.link.discard(conn)
                    raise
                if writes is None:
                    await self.link.run(conn, [("UNWATCH",)])
                    return result
                replies = await self.link.write(conn, [("MULTI",), *writes, ("EXEC",)])
                if replies[-1] is not None:
                    return result
            finally:
                await self.link.give_back(conn)

    async def init(self, count: int, ttl_ms: int, gen: str, strategy: str) -> Meta:
        async def body(read: Reader) -> tuple[list[Command] | None, Meta]:
            (found,) = await read([("HMGET", self.meta_key, "count", "gen", "strategy")])
            if found[0] is not None:
                strat = text(found[2]) if found[2] else "lua"
                return None, Meta(int(found[0]), text(found[1]), strat)
            writes: list[Command] = [
                ("DEL", self.pool_key, self.holders_key, self.waiters_key, self.handed_key),
                ("RPUSH", self.pool_key, *_tokens(gen, count)),
                ("HSET", self.meta_key, "count", count, "gen", gen, "strategy", strategy),
                ("HSET", self.meta_key, "recover", 0),
                ("PEXPIRE", self.meta_key, ttl_ms),
                ("PEXPIRE", self.pool_key, ttl_ms),
            ]
            return writes, Meta(count, gen, strategy, True)

        return await self._tx([self.meta_key, self.pool_key, self.holders_key], body)

    async def release(self, member: str, token: str, gen: str, ttl_ms: int) -> Released:
        slot_key = self.slot_key(member)

        async def body(read: Reader) -> tuple[list[Command] | None, int]:
            current, pos = await read([("HGET", self.meta_key, "gen"), ("LPOS", slot_key, token)])
            remove: list[Command] = [("LREM", slot_key, 1, token)]
            if current is None:
                return remove, -1
            if text(current) != gen:
                return remove, -2
            if pos is None:
                return None, 0
            return [
                *remove,
                ("RPUSH", self.pool_key, token),
                ("PEXPIRE", self.pool_key, ttl_ms),
            ], 1

        return await self._tx([self.meta_key, slot_key], body), None

    async def renew(
        self,
        slots: Sequence[SlotState],
        count: int,
        gen: str,
        strategy: str,
        ttl_ms: int,
        recover_ms: int,
        channel: str = "",
    ) -> RenewResult:
        own = {slot.member for slot in slots}

        async def body(read: Reader) -> tuple[list[Command] | None, RenewResult]:
            replies = await read(
                [
                    ("TIME",),
                    ("HMGET", self.meta_key, "count", "gen", "recover"),
                    ("ZCARD", self.holders_key),
                    ("LRANGE", self.pool_key, 0, -1),
                    *(("LRANGE", slot.key, 0, -1) for slot in slots),
                    *(("ZSCORE", self.holders_key, slot.member) for slot in slots),
                ]
            )
            now = now_ms(replies[0])
            found = replies[1]
            registered = int(replies[2])
            pool = set(_strings(replies[3]))
            contents = [_strings(r) for r in replies[4 : 4 + len(slots)]]
            scores = replies[4 + len(slots) :]
            writes: list[Command] = []
            status = "ok"
            if found[0] is None:
                recover = now + recover_ms
                writes.append(
                    ("HSET", self.meta_key, "count", count, "gen", gen, "strategy", strategy)
                )
                writes.append(("HSET", self.meta_key, "recover", recover))
                status = "restored"
            elif int(found[0]) != count or text(found[1]) != gen:
                for slot in slots:
                    writes += [("DEL", slot.key), ("ZREM", self.holders_key, slot.member)]
                return writes, RenewResult("stale", count=int(found[0]), gen=text(found[1]))
            else:
                recover = int(found[2] or 0)
                if recover == 0 and registered == 0 and len(pool) < int(found[0]):
                    # See semaphore_renew.lua: registrations expired with their permits.
                    recover = now + recover_ms
                    writes.append(("HSET", self.meta_key, "recover", recover))
                    status = "restored"
            (stale,) = await read([("ZRANGEBYSCORE", self.holders_key, "-inf", now + ttl_ms // 2)])
            result = RenewResult(
                status,
                stale_members=[m for m in _strings(stale) if m not in own],
                refill_due=recover != 0 and recover <= now,
            )
            for slot, items, score in zip(slots, contents, scores):
                if not items:
                    if recover == 0 and slot.tokens and score is not None:
                        # See semaphore_renew.lua: a registered slot expired, permits inside.
                        recover = now + recover_ms
                        writes.append(("HSET", self.meta_key, "recover", recover))
                        result.status = "restored"
                    restored = [t for t in slot.tokens if t not in pool] if recover != 0 else []
                    writes.append(("RPUSH", slot.key, "", *restored))
                    items = ["", *restored]
                elif items[0] != "":
                    writes.append(("LPUSH", slot.key, ""))
                    items = ["", *items]
                writes += [
                    ("ZADD", self.holders_key, now + ttl_ms, slot.member),
                    ("PEXPIRE", slot.key, ttl_ms),
                ]
                result.slots.append(items[1:])
            for key in (self.meta_key, self.pool_key, self.holders_key):
                writes.append(("PEXPIRE", key, ttl_ms))
            return writes, result

        watch = [self.meta_key, self.holders_key, self.pool_key, *(slot.key for slot in slots)]
        return await self._tx(watch, body)

    async def reclaim(self, members: Sequence[str], gen: str, ttl_ms: int) -> int:
        slot_keys = [self.slot_key(m) for m in members]
        prefix = gen + ":"

        async def body(read: Reader) -> tuple[list[Command] | None, int]:
            n = len(members)
            replies = await read(
                [
                    ("HMGET", self.meta_key, "gen", "recover"),
                    ("TIME",),
                    *(("ZSCORE", self.holders_key, m) for m in members),
                    *(("LRANGE", k, 1, -1) for k in slot_keys),
                    *(("EXISTS", k) for k in slot_keys),
                ]
            )
            gen_found, recover = replies[0]
            if gen_found is None or text(gen_found) != gen:
                return None, -1
            now = now_ms(replies[1])
            scores = replies[2 : 2 + n]
            contents = replies[2 + n : 2 + 2 * n]
            exists = replies[2 + 2 * n :]
            writes: list[Command] = []
            returned: list[str] = []
            recovering = int(recover or 0) != 0
            for member, key, score, items, present in zip(
                members, slot_keys, scores, contents, exists
            ):
                if score is None:
                    continue
                if float(score) <= now:
                    if not int(present) and not recovering:
                        # See semaphore_reclaim.lua: a slot gone with its permit.
                        deadline = now + recovery_window_ms(ttl_ms)
                        writes.append(("HSET", self.meta_key, "recover", deadline))
                        recovering = True
                    returned += [t for t in _strings(items) if t.startswith(prefix)]
                    writes += [("DEL", key), ("ZREM", self.holders_key, member)]
                else:
                    writes.append(("PEXPIRE", key, ttl_ms))
            if returned:
                writes += [
                    ("RPUSH", self.pool_key, *returned),
                    ("PEXPIRE", self.pool_key, ttl_ms),
                ]
            return (writes or None), len(returned)

        return await self._tx([self.meta_key, self.holders_key, *slot_keys], body)

    async def refill(self, members: Sequence[str], count: int, gen: str, ttl_ms: int) -> int:
        slot_keys = [self.slot_key(m) for m in members]

        async def body(read: Reader) -> tuple[list[Command] | None, int]:
            replies = await read(
                [
                    ("HMGET", self.meta_key, "gen", "recover"),
                    ("TIME",),
                    ("ZRANGE", self.holders_key, 0, -1),
                    ("LRANGE", self.pool_key, 0, -1),
                    *(("LRANGE", k, 1, -1) for k in slot_keys),
                    *(("ZSCORE", self.holders_key, m) for m in members),
                ]
            )
            found = replies[0]
            if found[0] is None or text(found[0]) != gen:
                return None, -1
            recover = int(found[1] or 0)
            if recover == 0:
                return None, 0
            now = now_ms(replies[1])
            if recover > now:  # see semaphore_refill.lua: a later window
                return None, 0
            if sorted(_strings(replies[2])) != sorted(members):
                return None, -2
            n = len(members)
            contents = replies[3 : 4 + n]
            scores = replies[4 + n :]
            # See semaphore_refill.lua: a live member that has not renewed
            # since the window opened may hold a permit it has yet to put back.
            opened = recover - recovery_window_ms(ttl_ms)
            for score in scores:
                if score is None:
                    return None, -2
                if float(score) < opened + ttl_ms:
                    return None, -3
            present = set()
            for items in contents:
                present.update(_strings(items))
            missing = [t for t in _tokens(gen, count) if t not in present]
            writes: list[Command] = [("HSET", self.meta_key, "recover", 0)]
            if missing:
                writes.append(("RPUSH", self.pool_key, *missing))
            writes += [("PEXPIRE", self.meta_key, ttl_ms), ("PEXPIRE", self.pool_key, ttl_ms)]
            return writes, len(missing)

        return await self._tx([self.meta_key, self.pool_key, self.holders_key, *slot_keys], body)

    async def deregister(self, members: Sequence[str]) -> int:
        slot_keys = [self.slot_key(m) for m in members]

        async def body(read: Reader) -> tuple[list[Command] | None, int]:
            lengths = await read([("LLEN", k) for k in slot_keys])
            writes: list[Command] = []
            for member, key, length in zip(members, slot_keys, lengths):
                if int(length) <= 1:
                    writes += [("DEL", key), ("ZREM", self.holders_key, member)]
            return (writes or None), len(writes) // 2

        return await self._tx([self.holders_key, *slot_keys], body)
