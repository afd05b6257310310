"""The public surface of redsync: names, signatures, defaults, exceptions, argument checks.

Everything here is pinned by the 2.0 API reference (existing callers must run
unchanged) plus the fixes 2.0.0 lacked: exported base exceptions, rejected bad
input that never reaches Redis, and timeouts of 0 / negative / inf / NaN that
behave instead of blocking forever or failing inside Redis.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import importlib.metadata
import importlib.resources
import inspect
import math
import re
import time
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from devtools import wait_until

import redsync
from redsync import (
    RedisEvent,
    RedisEventError,
    RedisEventTimeoutError,
    RedisSemaphore,
    RedisSemaphoreCountError,
    RedisSemaphoreCountMismatchError,
    RedisSemaphoreError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
    RedsyncError,
    SemaphoreInitStrategy,
)

POS = inspect.Parameter.POSITIONAL_OR_KEYWORD
KW = inspect.Parameter.KEYWORD_ONLY
VAR = inspect.Parameter.VAR_POSITIONAL
EMPTY = inspect.Parameter.empty

#: A prompt non-blocking attempt finishes well within this (seconds).
PROMPT = 1.0


async def keys_of(client: aioredis.Redis, unique_name: str) -> list[bytes]:
    """Every key in Redis whose name contains ``unique_name``."""
    return [k async for k in client.scan_iter(match=f"*{unique_name}*", count=1000)]


async def assert_nothing_written(client: aioredis.Redis, unique_name: str) -> None:
    assert await keys_of(client, unique_name) == []


def params(func: Any) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter, ``self``/``cls`` excluded."""
    sig = inspect.signature(func)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in ("self",)]


# --------------------------------------------------------------------------- names


SPEC_NAMES = {
    "RedisSemaphore",
    "SemaphoreInitStrategy",
    "RedisEvent",
    "RedsyncError",
    "RedisSemaphoreError",
    "RedisSemaphoreTimeoutError",
    "RedisSemaphoreNotAcquiredError",
    "RedisSemaphoreCountError",
    "RedisSemaphoreCountMismatchError",
    "RedisEventError",
    "RedisEventTimeoutError",
}


def test_all_lists_every_spec_name() -> None:
    assert set(redsync.__all__) >= SPEC_NAMES
    assert len(redsync.__all__) == len(set(redsync.__all__)), "duplicates in __all__"


@pytest.mark.parametrize("name", sorted(redsync.__all__))
def test_every_name_in_all_is_importable(name: str) -> None:
    module = importlib.import_module("redsync")
    assert hasattr(module, name), f"redsync.__all__ lists {name!r} but it is missing"
    exec(f"from redsync import {name}", {})


def test_star_import_gives_the_spec_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from redsync import *", namespace)
    missing = SPEC_NAMES - set(namespace)
    assert not missing, f"`from redsync import *` lacks {sorted(missing)}"


def test_base_errors_are_exported() -> None:
    # 2.0.0 forgot these two; callers want `except redsync.RedsyncError`.
    from redsync import RedisSemaphoreError as SemErr
    from redsync import RedsyncError as Base

    assert Base is redsync.exceptions.RedsyncError
    assert SemErr is redsync.exceptions.RedisSemaphoreError


def test_version() -> None:
    version = redsync.__version__
    assert isinstance(version, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d*)*", version), version
    assert int(version.split(".")[0]) == 2, "the 2.x API is kept, so the major version is 2"
    try:
        installed = importlib.metadata.version("redsync")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return
    assert installed == version


def test_py_typed_is_shipped() -> None:
    marker = importlib.resources.files("redsync") / "py.typed"
    assert marker.is_file()


def test_declared_entry_points_load() -> None:
    # Regression (fixed; was in pyproject.toml [project.scripts]):
    # the distribution declares the
    # console script `redsync = "redsync.__main__:main"`, but there is no
    # src/redsync/__main__.py, so the installed `redsync` command fails with
    # ModuleNotFoundError.  Either ship __main__.py or drop the entry point.
    try:
        dist = importlib.metadata.distribution("redsync")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        pytest.skip("redsync is not installed")
    broken = {}
    for entry_point in dist.entry_points:
        try:
            entry_point.load()
        except Exception as exc:
            broken[f"{entry_point.name} = {entry_point.value}"] = repr(exc)
    assert not broken, broken


# --------------------------------------------------------------------------- exceptions


HIERARCHY = {
    RedsyncError: Exception,
    RedisSemaphoreError: RedsyncError,
    RedisSemaphoreTimeoutError: RedisSemaphoreError,
    RedisSemaphoreNotAcquiredError: RedisSemaphoreError,
    RedisSemaphoreCountError: RedisSemaphoreError,
    RedisSemaphoreCountMismatchError: RedisSemaphoreError,
    RedisEventError: RedsyncError,
    RedisEventTimeoutError: RedisEventError,
    redsync.RedsyncTimeoutError: RedsyncError,
    redsync.RedsyncClosedError: RedsyncError,
    redsync.RedsyncLeaseLostError: RedsyncError,
    redsync.RedisSemaphoreClosedError: RedisSemaphoreError,
    redsync.RedisEventClosedError: RedisEventError,
}

#: The bases shared across primitives, and who derives from each.
CROSS_BASES = {
    redsync.RedsyncTimeoutError: (RedisSemaphoreTimeoutError, RedisEventTimeoutError),
    redsync.RedsyncClosedError: (redsync.RedisSemaphoreClosedError, redsync.RedisEventClosedError),
    redsync.RedsyncLeaseLostError: (redsync.RedisSemaphoreLeaseLostError,),
}


def test_shared_bases_cut_across_primitives() -> None:
    for base, subclasses in CROSS_BASES.items():
        for cls in subclasses:
            assert issubclass(cls, base), (cls, base)
        others = [c for c in HIERARCHY if c not in subclasses and c is not base]
        for cls in others:
            assert not issubclass(cls, base) or base is cls, (cls, base)
    assert issubclass(redsync.RedsyncTimeoutError, TimeoutError)
    assert not issubclass(redsync.RedsyncClosedError, TimeoutError)


async def test_waiters_at_close_get_the_closed_errors(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    await sem.acquire()
    waiter = asyncio.ensure_future(sem.acquire())
    event = RedisEvent(redis, unique_name)
    listener = asyncio.ensure_future(event.wait())
    await wait_until(lambda: sem.locked() and event._waiting > 0, timeout=5)
    await sem.close()
    await event.close()
    with pytest.raises(redsync.RedisSemaphoreClosedError, match="closed"):
        await waiter
    with pytest.raises(redsync.RedisEventClosedError, match="closed"):
        await listener
    assert isinstance(waiter.exception(), redsync.RedsyncClosedError)
    await sem.release()
    assert (await sem.statistics()).available == 1


@pytest.mark.parametrize("cls", list(HIERARCHY), ids=lambda c: c.__name__)
def test_exception_parent(cls: type[BaseException]) -> None:
    parent = HIERARCHY[cls]
    assert issubclass(cls, parent)
    assert parent in cls.__mro__


def test_exception_branches_do_not_cross() -> None:
    semaphore_side = [c for c in HIERARCHY if c.__name__.startswith("RedisSemaphore")]
    event_side = [c for c in HIERARCHY if c.__name__.startswith("RedisEvent")]
    for cls in semaphore_side:
        assert not issubclass(cls, RedisEventError), cls
    for cls in event_side:
        assert not issubclass(cls, RedisSemaphoreError), cls
    leaves = [
        RedisSemaphoreTimeoutError,
        RedisSemaphoreNotAcquiredError,
        RedisSemaphoreCountError,
        RedisSemaphoreCountMismatchError,
    ]
    for a in leaves:
        for b in leaves:
            if a is not b:
                assert not issubclass(a, b), (a, b)
    assert not issubclass(RedsyncError, RedisSemaphoreError)
    assert not issubclass(RedsyncError, RedisEventError)


def test_exceptions_live_in_the_exceptions_module() -> None:
    for cls in HIERARCHY:
        assert getattr(redsync.exceptions, cls.__name__) is cls
        assert getattr(redsync, cls.__name__) is cls


# --------------------------------------------------------------------------- signatures


def test_create_signature() -> None:
    assert inspect.ismethod(RedisSemaphore.create), "create must stay a classmethod"
    assert inspect.iscoroutinefunction(RedisSemaphore.create)
    assert params(RedisSemaphore.create) == [
        ("redis_client", POS, EMPTY),
        ("name", POS, EMPTY),
        ("count", KW, 1),
        ("lease_ttl", KW, 300.0),
        ("semaphore_init_strategy", KW, SemaphoreInitStrategy.LUA),
        ("key_prefix", KW, "redsync:semaphore"),
        # Additions to 2.0's signature: keyword-only, defaults keep 2.0's behaviour.
        ("replicas", KW, 0),
        ("replica_timeout", KW, 0.5),
    ]


def test_attach_signature() -> None:
    assert inspect.ismethod(RedisSemaphore.attach), "attach must stay a classmethod"
    assert inspect.iscoroutinefunction(RedisSemaphore.attach)
    assert params(RedisSemaphore.attach) == [
        ("redis_client", POS, EMPTY),
        ("name", POS, EMPTY),
        ("timeout", KW, 60.0),
        ("lease_ttl", KW, 300.0),
        ("key_prefix", KW, "redsync:semaphore"),
        ("replicas", KW, 0),
        ("replica_timeout", KW, 0.5),
    ]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("acquire", [("timeout", POS, None)]),
        ("release", []),
        ("get_count", []),
        ("close", []),
        ("__aenter__", []),
    ],
)
def test_semaphore_method_signatures(method: str, expected: list[Any]) -> None:
    func = getattr(RedisSemaphore, method)
    assert inspect.iscoroutinefunction(func), f"{method} must be async"
    assert params(func) == expected


def test_semaphore_aexit_takes_any_exc_info() -> None:
    func = RedisSemaphore.__aexit__
    assert inspect.iscoroutinefunction(func)
    kinds = [kind for _, kind, _ in params(func)]
    assert kinds == [VAR], "__aexit__(self, *exc)"


def test_event_signatures() -> None:
    assert params(RedisEvent.__init__) == [
        ("redis_client", POS, EMPTY),
        ("name", POS, EMPTY),
        ("key_prefix", KW, "redsync:event"),
    ]
    assert params(RedisEvent.wait) == [("timeout", POS, None)]
    for method in ("set", "wait", "clear", "is_set"):
        func = getattr(RedisEvent, method)
        assert inspect.iscoroutinefunction(func), f"RedisEvent.{method} must be async"
    for method in ("set", "clear", "is_set"):
        assert params(getattr(RedisEvent, method)) == []


def test_semaphore_init_strategy_values() -> None:
    assert issubclass(SemaphoreInitStrategy, str)
    assert issubclass(SemaphoreInitStrategy, enum.Enum)
    assert {m.name: m.value for m in SemaphoreInitStrategy} == {
        "LUA": "lua",
        "OPTIMISTIC_LOCKING": "optimistic_locking",
    }
    assert SemaphoreInitStrategy("lua") is SemaphoreInitStrategy.LUA
    assert SemaphoreInitStrategy.OPTIMISTIC_LOCKING == "optimistic_locking"


async def test_name_attribute_and_context_manager(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    try:
        assert sem.name == unique_name
        async with sem as entered:
            assert entered is sem
            with pytest.raises(RedisSemaphoreTimeoutError):
                await sem.acquire(timeout=0)
        # released on exit: the permit is free again
        await sem.acquire(timeout=0)
        await sem.release()
        with pytest.raises(RedisSemaphoreNotAcquiredError):
            await sem.release()
    finally:
        await sem.close()
    event = RedisEvent(redis, unique_name)
    assert event.name == unique_name


async def test_context_manager_releases_on_error(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    try:
        with pytest.raises(KeyError):
            async with sem:
                raise KeyError("inside")
        await sem.acquire(timeout=0)  # the permit came back
        await sem.release()
    finally:
        await sem.close()


def test_event_can_be_built_outside_a_running_loop(redis_url: str) -> None:
    # 2.0.0's constructor is synchronous; building one at import time must keep working.
    client = aioredis.Redis.from_url(redis_url)
    event = RedisEvent(client, "built-outside-a-loop")
    assert event.name == "built-outside-a-loop"


async def test_positional_and_keyword_calls_keep_working(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """The call shapes 2.0.0 users write, with every argument spelled out."""
    sem = await RedisSemaphore.create(
        redis_client=redis,
        name=unique_name,
        count=2,
        lease_ttl=30.0,
        semaphore_init_strategy=SemaphoreInitStrategy.LUA,
        key_prefix="redsync:semaphore",
    )
    other = await RedisSemaphore.attach(
        redis_client=redis,
        name=unique_name,
        timeout=5.0,
        lease_ttl=30.0,
        key_prefix="redsync:semaphore",
    )
    try:
        await sem.acquire(5)
        await other.acquire(timeout=5)
        assert await other.get_count() == 2
        await sem.release()
        await other.release()
    finally:
        await sem.close()
        await other.close()
    event = RedisEvent(redis_client=redis, name=unique_name, key_prefix="redsync:event")
    await event.set()
    await event.wait(5)
    await event.set()
    await event.wait(timeout=5)


async def test_default_key_prefixes(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name)
    try:
        keys = [k.decode() for k in await keys_of(redis, unique_name)]
        assert keys
        assert all(k.startswith("redsync:semaphore:") for k in keys), keys
    finally:
        await sem.close()
    event = RedisEvent(redis, unique_name)
    await event.set()
    event_keys = [k.decode() for k in await keys_of(redis, unique_name)]
    assert [k for k in event_keys if k.startswith("redsync:event:")], event_keys


# --------------------------------------------------------------------------- bad input


class NotAClient:
    pass


BAD_CLIENTS = [
    pytest.param(lambda url: sync_redis.Redis.from_url(url), id="sync-redis"),
    pytest.param(lambda url: None, id="None"),
    pytest.param(lambda url: url, id="str"),
    pytest.param(lambda url: NotAClient(), id="object"),
]


@pytest.mark.parametrize("make_client", BAD_CLIENTS)
async def test_wrong_client_type_is_rejected(
    make_client: Any, redis_url: str, redis: aioredis.Redis, unique_name: str
) -> None:
    bad = make_client(redis_url)
    try:
        with pytest.raises(TypeError, match="redis_client"):
            await RedisSemaphore.create(bad, unique_name, count=2)
        with pytest.raises(TypeError, match="redis_client"):
            await RedisSemaphore.attach(bad, unique_name, timeout=0)
        with pytest.raises(TypeError, match="redis_client"):
            RedisEvent(bad, unique_name)
    finally:
        if isinstance(bad, sync_redis.Redis):
            bad.close()
    await assert_nothing_written(redis, unique_name)


@pytest.mark.parametrize(
    ("name", "error"),
    [("", ValueError), (None, TypeError), (42, TypeError), (b"bytes", TypeError)],
    ids=["empty", "None", "int", "bytes"],
)
async def test_bad_name_is_rejected(
    name: Any, error: type[Exception], private_server: Any, redis_factory: Any
) -> None:
    client = redis_factory(private_server.url)
    with pytest.raises(error, match="name"):
        await RedisSemaphore.create(client, name, count=1)
    with pytest.raises(error, match="name"):
        await RedisSemaphore.attach(client, name, timeout=0)
    with pytest.raises(error, match="name"):
        RedisEvent(client, name)
    assert await client.dbsize() == 0


@pytest.mark.parametrize("count", [0, 4097, -1, 1.5, True, False, "3", None, 2.0], ids=repr)
async def test_bad_count_is_rejected(count: Any, redis: aioredis.Redis, unique_name: str) -> None:
    with pytest.raises(RedisSemaphoreCountError, match="count") as info:
        await RedisSemaphore.create(redis, unique_name, count=count)
    assert info.value.count is count or info.value.count == count
    assert isinstance(info.value, RedisSemaphoreError)
    assert isinstance(info.value, RedsyncError)
    await assert_nothing_written(redis, unique_name)


@pytest.mark.parametrize("count", [1, 4096])
async def test_count_bounds_are_accepted(
    count: int, redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=count)
    try:
        assert await sem.get_count() == count
        pools = [k for k in await keys_of(redis, unique_name) if k.endswith(b":pool")]
        assert len(pools) == 1
        assert await redis.llen(pools[0]) == count
    finally:
        await sem.close()


@pytest.mark.parametrize(
    ("lease_ttl", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        ("x", TypeError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (None, TypeError),
        (1e12, ValueError),
    ],
    ids=repr,
)
async def test_bad_lease_ttl_is_rejected(
    lease_ttl: Any, error: type[Exception], redis: aioredis.Redis, unique_name: str
) -> None:
    with pytest.raises(error, match="lease_ttl"):
        await RedisSemaphore.create(redis, unique_name, count=2, lease_ttl=lease_ttl)
    await assert_nothing_written(redis, unique_name)
    # attach with a bad lease_ttl is refused too, even though the semaphore exists
    sem = await RedisSemaphore.create(redis, unique_name, count=2)
    try:
        keys_before = sorted(await keys_of(redis, unique_name))
        with pytest.raises(error, match="lease_ttl"):
            await RedisSemaphore.attach(redis, unique_name, timeout=0, lease_ttl=lease_ttl)
        assert sorted(await keys_of(redis, unique_name)) == keys_before
    finally:
        await sem.close()


async def test_fractional_lease_ttl_is_honoured(redis: aioredis.Redis, unique_name: str) -> None:
    # 2.0.0 truncated 0.6 s to EXPIRE 0, which deleted the keys at once.
    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=0.6)
    try:
        keys = await keys_of(redis, unique_name)
        assert keys
        for key in keys:
            pttl = await redis.pttl(key)
            assert 0 < pttl <= 600, (key, pttl)
    finally:
        await sem.close()


@pytest.mark.parametrize(
    "strategy",
    ["bogus", "lua2", "SemaphoreInitStrategy.BOGUS", "Strategy.LUA", "", 1, None],
    ids=repr,
)
async def test_bad_strategy_is_rejected(
    strategy: Any, redis: aioredis.Redis, unique_name: str
) -> None:
    with pytest.raises(ValueError, match="semaphore_init_strategy"):
        await RedisSemaphore.create(redis, unique_name, count=2, semaphore_init_strategy=strategy)
    await assert_nothing_written(redis, unique_name)


async def test_strategy_given_as_its_string_value_is_accepted(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(
        redis, unique_name, count=1, semaphore_init_strategy="optimistic_locking"
    )
    try:
        await sem.acquire(timeout=5)
        await sem.release()
    finally:
        await sem.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (SemaphoreInitStrategy.LUA, SemaphoreInitStrategy.LUA),
        ("lua", SemaphoreInitStrategy.LUA),
        ("LUA", SemaphoreInitStrategy.LUA),
        ("SemaphoreInitStrategy.LUA", SemaphoreInitStrategy.LUA),
        ("semaphoreinitstrategy.lua", SemaphoreInitStrategy.LUA),
        (SemaphoreInitStrategy.OPTIMISTIC_LOCKING, SemaphoreInitStrategy.OPTIMISTIC_LOCKING),
        ("Optimistic_Locking", SemaphoreInitStrategy.OPTIMISTIC_LOCKING),
        ("OPTIMISTIC_LOCKING", SemaphoreInitStrategy.OPTIMISTIC_LOCKING),
        ("SemaphoreInitStrategy.OPTIMISTIC_LOCKING", SemaphoreInitStrategy.OPTIMISTIC_LOCKING),
    ],
    ids=repr,
)
async def test_strategy_forms_2_0_accepted(
    given: Any, expected: SemaphoreInitStrategy, redis: aioredis.Redis, unique_name: str
) -> None:
    """A member, its value, its name or its str() (how 2.0.0's own multiprocess test
    passes it to workers), in any case, names the strategy; it is stored in meta."""
    sem = await RedisSemaphore.create(redis, unique_name, count=1, semaphore_init_strategy=given)
    try:
        assert sem.strategy is expected
        stored = await redis.hget(f"redsync:semaphore:{{{unique_name}}}:meta", "strategy")
        assert stored == expected.value.encode()
        await sem.acquire(timeout=5)
        await sem.release()
    finally:
        await sem.close()
    # Every form of every member round-trips, str() included (it differs across Pythons).
    for member in SemaphoreInitStrategy:
        for form in (str(member), member.name, member.value, member.name.lower()):
            other = await RedisSemaphore.create(
                redis, f"{unique_name}-{form}", count=1, semaphore_init_strategy=form
            )
            assert other.strategy is member, form
            await other.close()


async def test_trailing_colons_of_key_prefix_name_the_same_primitive(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """2.0.0 strips trailing ':' from key_prefix: "app:" and "app" are one semaphore."""
    prefix = f"app-{unique_name}"
    sem = await RedisSemaphore.create(redis, unique_name, count=2, key_prefix=f"{prefix}:")
    try:
        with pytest.raises(RedisSemaphoreCountMismatchError):
            await RedisSemaphore.create(redis, unique_name, count=3, key_prefix=prefix)
        joined = await RedisSemaphore.create(redis, unique_name, count=2, key_prefix=f"{prefix}::")
        await joined.acquire(timeout=5)
        await joined.acquire(timeout=5)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await sem.acquire(timeout=0)
        await joined.release()
        await joined.release()
        await joined.close()
        found = [k.decode() async for k in redis.scan_iter(match=f"{prefix}*")]
        assert found and all(k.startswith(f"{prefix}:{{") for k in found), found
    finally:
        await sem.close()
    setter = RedisEvent(redis, unique_name, key_prefix=f"{prefix}:")
    waiter = RedisEvent(redis, unique_name, key_prefix=prefix)
    await setter.set()
    assert await waiter.is_set()
    await waiter.wait(timeout=5)
    assert not await setter.is_set()


@pytest.mark.parametrize(
    "cls",
    [
        RedsyncError,
        RedisSemaphoreError,
        RedisSemaphoreTimeoutError,
        RedisSemaphoreNotAcquiredError,
        redsync.RedisSemaphoreLeaseLostError,
        RedisEventError,
        RedisEventTimeoutError,
    ],
)
def test_exceptions_built_without_arguments_carry_a_message(cls: type[Exception]) -> None:
    error = cls()
    assert str(error).strip(), cls
    assert error.args == (str(error),)
    assert str(cls("custom")) == "custom"


def test_2_0_exception_messages_name_what_happened() -> None:
    assert "acquire" in str(RedisSemaphoreTimeoutError())
    assert "release" in str(RedisSemaphoreNotAcquiredError())
    assert "event" in str(RedisEventTimeoutError())


@pytest.mark.parametrize(
    ("prefix", "error"),
    [("", ValueError), (":", ValueError), ("::", ValueError), (None, TypeError)],
    ids=repr,
)
async def test_bad_key_prefix_is_rejected(
    prefix: Any, error: type[Exception], redis: aioredis.Redis, unique_name: str
) -> None:
    with pytest.raises(error, match="key_prefix"):
        await RedisSemaphore.create(redis, unique_name, count=2, key_prefix=prefix)
    with pytest.raises(error, match="key_prefix"):
        await RedisSemaphore.attach(redis, unique_name, timeout=0, key_prefix=prefix)
    with pytest.raises(error, match="key_prefix"):
        RedisEvent(redis, unique_name, key_prefix=prefix)
    await assert_nothing_written(redis, unique_name)


async def test_rejected_input_sends_no_command_at_all(
    private_server: Any, redis_factory: Any, unique_name: str
) -> None:
    """On a private server, no bad call reaches Redis with anything at all."""
    client = redis_factory(private_server.url)
    await client.ping()  # open the connection now, so its handshake is not counted
    await asyncio.to_thread(private_server.reset_stats)
    bad_calls = [
        lambda: RedisSemaphore.create(client, "", count=1),
        lambda: RedisSemaphore.create(client, unique_name, count=0),
        lambda: RedisSemaphore.create(client, unique_name, count="3"),
        lambda: RedisSemaphore.create(client, unique_name, lease_ttl=math.nan),
        lambda: RedisSemaphore.create(client, unique_name, lease_ttl=0),
        lambda: RedisSemaphore.create(client, unique_name, semaphore_init_strategy="x"),
        lambda: RedisSemaphore.create(client, unique_name, key_prefix=""),
        lambda: RedisSemaphore.attach(client, unique_name, timeout=math.nan),
        lambda: RedisSemaphore.attach(client, unique_name, timeout="x"),
        lambda: RedisSemaphore.attach(client, unique_name, lease_ttl=-1),
    ]
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError)):
            await call()
    with pytest.raises(ValueError):
        RedisEvent(client, "")
    event = RedisEvent(client, unique_name)
    with pytest.raises(ValueError):
        await event.wait(math.nan)
    with pytest.raises(TypeError):
        await event.wait("x")  # type: ignore[arg-type]
    stats = await asyncio.to_thread(private_server.commandstats)
    sent = {cmd for cmd in stats if cmd not in ("info", "config|resetstat")}
    assert not sent, f"rejected calls still sent {sent}"
    assert await client.dbsize() == 0


# --------------------------------------------------------------------------- timeouts


BAD_TIMEOUTS = [
    pytest.param(math.nan, ValueError, id="nan"),
    pytest.param("x", TypeError, id="str"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param([1], TypeError, id="list"),
]


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS)
async def test_acquire_bad_timeout(
    timeout: Any, error: type[Exception], redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    try:
        with pytest.raises(error, match="timeout"):
            await sem.acquire(timeout)
        # no permit was taken by the refused call
        await sem.acquire(timeout=0)
        await sem.release()
    finally:
        await sem.close()


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS)
async def test_wait_bad_timeout(
    timeout: Any, error: type[Exception], redis: aioredis.Redis, unique_name: str
) -> None:
    event = RedisEvent(redis, unique_name)
    await event.set()
    with pytest.raises(error, match="timeout"):
        await event.wait(timeout)
    assert await event.is_set(), "a refused wait() must not take the signal"
    await event.wait(timeout=0)
    assert not await event.is_set()


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS)
async def test_attach_bad_timeout(
    timeout: Any, error: type[Exception], redis: aioredis.Redis, unique_name: str
) -> None:
    with pytest.raises(error, match="timeout"):
        await RedisSemaphore.attach(redis, unique_name, timeout=timeout)
    await assert_nothing_written(redis, unique_name)


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, -math.inf], ids=repr)
async def test_acquire_nonblocking_when_nothing_free(
    timeout: float, redis: aioredis.Redis, unique_name: str
) -> None:
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    other = await RedisSemaphore.attach(redis, unique_name, timeout=5)
    try:
        await holder.acquire(timeout=5)
        started = time.monotonic()
        with pytest.raises(RedisSemaphoreTimeoutError):
            await asyncio.wait_for(other.acquire(timeout=timeout), 10)
        assert time.monotonic() - started < PROMPT
        await holder.release()
        # the same non-blocking call succeeds once a permit is free
        started = time.monotonic()
        await asyncio.wait_for(other.acquire(timeout=timeout), 10)
        assert time.monotonic() - started < PROMPT
        await other.release()
    finally:
        await holder.close()
        await other.close()


@pytest.mark.parametrize("timeout", [0, -1, -math.inf], ids=repr)
async def test_wait_nonblocking(timeout: float, redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    started = time.monotonic()
    with pytest.raises(RedisEventTimeoutError):
        await asyncio.wait_for(event.wait(timeout), 10)
    assert time.monotonic() - started < PROMPT
    await event.set()
    started = time.monotonic()
    await asyncio.wait_for(event.wait(timeout), 10)
    assert time.monotonic() - started < PROMPT
    assert not await event.is_set()


@pytest.mark.parametrize("timeout", [0, -1, -math.inf], ids=repr)
async def test_attach_nonblocking(timeout: float, redis: aioredis.Redis, unique_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(RedisSemaphoreTimeoutError):
        await asyncio.wait_for(RedisSemaphore.attach(redis, unique_name, timeout=timeout), 10)
    assert time.monotonic() - started < PROMPT
    await assert_nothing_written(redis, unique_name)
    creator = await RedisSemaphore.create(redis, unique_name, count=3)
    try:
        joined = await asyncio.wait_for(
            RedisSemaphore.attach(redis, unique_name, timeout=timeout), 10
        )
        assert await joined.get_count() == 3
        await joined.close()
    finally:
        await creator.close()


def test_timeout_errors_are_builtin_timeouts() -> None:
    # Not required by 2.0, but code written for asyncio.wait_for catches them.
    assert issubclass(RedisSemaphoreTimeoutError, TimeoutError)
    assert issubclass(RedisEventTimeoutError, TimeoutError)


@pytest.mark.parametrize("timeout", [None, math.inf, 1e12, 1e300], ids=repr)
async def test_acquire_long_or_unbounded_timeout_waits(
    timeout: float | None, redis: aioredis.Redis, unique_name: str
) -> None:
    """None waits forever; +inf is None; huge values never reach Redis raw."""
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    waiter = await RedisSemaphore.attach(redis, unique_name, timeout=5)
    try:
        await holder.acquire(timeout=5)
        task = asyncio.ensure_future(waiter.acquire(timeout))
        await wait_until(lambda: waiter.locked(), timeout=5, message="acquire() is waiting")
        assert not task.done()
        await holder.release()
        await asyncio.wait_for(task, 10)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await holder.acquire(timeout=0)
        await waiter.release()
    finally:
        await holder.close()
        await waiter.close()


@pytest.mark.parametrize("timeout", [None, math.inf, 1e12, 1e300], ids=repr)
async def test_wait_long_or_unbounded_timeout_waits(
    timeout: float | None, redis: aioredis.Redis, unique_name: str
) -> None:
    event = RedisEvent(redis, unique_name)
    setter = RedisEvent(redis, unique_name)
    task = asyncio.ensure_future(event.wait(timeout))
    try:
        await wait_until(lambda: _waiting(event), timeout=5, message="wait() is blocking")
        assert not task.done()
        await setter.set()
        await asyncio.wait_for(task, 10)
        assert not await event.is_set()
    finally:
        task.cancel()
        await event.close()


async def _waiting(event: RedisEvent) -> bool:
    """One task waits, queued in the event's queue in Redis."""
    stats = await event.statistics()
    queued = await event._link.call("ZCARD", event._queue.waiters)
    return stats.tasks_waiting == 1 and int(queued) == 1


@pytest.mark.parametrize("timeout", [None, math.inf, 1e12], ids=repr)
async def test_attach_long_or_unbounded_timeout_waits(
    timeout: float | None, redis: aioredis.Redis, unique_name: str
) -> None:
    task = asyncio.ensure_future(RedisSemaphore.attach(redis, unique_name, timeout=timeout))
    closing: list[RedisSemaphore] = []
    try:
        # attach() polls with HMGET; it keeps looking (no ResponseError from a
        # huge timeout, no early give-up) until somebody creates the semaphore
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 0.3)
        assert not task.done()
        closing.append(await RedisSemaphore.create(redis, unique_name, count=2))
        joined = await asyncio.wait_for(task, 10)
        closing.append(joined)
        assert await joined.get_count() == 2
    finally:
        task.cancel()
        for sem in closing:
            await sem.close()


async def test_acquire_timeout_runs_out(redis: aioredis.Redis, unique_name: str) -> None:
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    waiter = await RedisSemaphore.attach(redis, unique_name, timeout=5)
    try:
        await holder.acquire()
        started = time.monotonic()
        with pytest.raises(RedisSemaphoreTimeoutError):
            await asyncio.wait_for(waiter.acquire(timeout=0.3), 10)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 0.3 + PROMPT, elapsed
        await holder.release()
    finally:
        await holder.close()
        await waiter.close()


async def test_wait_timeout_runs_out(redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    started = time.monotonic()
    with pytest.raises(RedisEventTimeoutError):
        await asyncio.wait_for(event.wait(timeout=0.3), 10)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.3 + PROMPT, elapsed
    await event.close()


# ---------------------------------------------------------------- create / attach / get_count


@pytest.mark.parametrize("strategy", list(SemaphoreInitStrategy), ids=lambda s: s.value)
async def test_create_is_idempotent(
    strategy: SemaphoreInitStrategy, redis: aioredis.Redis, unique_name: str
) -> None:
    first = await RedisSemaphore.create(
        redis, unique_name, count=3, semaphore_init_strategy=strategy
    )
    second = await RedisSemaphore.create(
        redis, unique_name, count=3, semaphore_init_strategy=strategy
    )
    try:
        assert await first.get_count() == 3
        assert await second.get_count() == 3
        pools = [k for k in await keys_of(redis, unique_name) if k.endswith(b":pool")]
        assert len(pools) == 1
        assert await redis.llen(pools[0]) == 3, "a second create() must not add permits"
        # exactly 3 permits across both instances
        await first.acquire(timeout=0)
        await second.acquire(timeout=0)
        await second.acquire(timeout=0)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await first.acquire(timeout=0)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await second.acquire(timeout=0)
        await first.release()
        await second.release()
        await second.release()
        assert await redis.llen(pools[0]) == 3
    finally:
        await first.close()
        await second.close()


async def test_concurrent_creates_make_one_pool(redis: aioredis.Redis, unique_name: str) -> None:
    sems = await asyncio.gather(
        *(RedisSemaphore.create(redis, unique_name, count=5) for _ in range(10))
    )
    try:
        pools = [k for k in await keys_of(redis, unique_name) if k.endswith(b":pool")]
        assert len(pools) == 1
        assert await redis.llen(pools[0]) == 5
    finally:
        for sem in sems:
            await sem.close()


@pytest.mark.parametrize("strategy", list(SemaphoreInitStrategy), ids=lambda s: s.value)
async def test_create_with_other_count_is_a_mismatch(
    strategy: SemaphoreInitStrategy, redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=2, semaphore_init_strategy=strategy)
    try:
        keys_before = sorted(await keys_of(redis, unique_name))
        with pytest.raises(RedisSemaphoreCountMismatchError) as info:
            await RedisSemaphore.create(
                redis, unique_name, count=5, semaphore_init_strategy=strategy
            )
        assert info.value.requested == 5
        assert info.value.actual == 2
        assert isinstance(info.value, RedisSemaphoreError)
        assert "5" in str(info.value) and "2" in str(info.value)
        assert sorted(await keys_of(redis, unique_name)) == keys_before
        pools = [k for k in keys_before if k.endswith(b":pool")]
        assert await redis.llen(pools[0]) == 2
        assert await sem.get_count() == 2
    finally:
        await sem.close()


async def test_count_error_carries_the_count(redis: aioredis.Redis, unique_name: str) -> None:
    with pytest.raises(RedisSemaphoreCountError) as info:
        await RedisSemaphore.create(redis, unique_name, count=4097)
    assert info.value.count == 4097
    assert "4097" in str(info.value)


async def test_attach_waits_for_a_later_create(
    private_server: Any, redis_factory: Any, unique_name: str
) -> None:
    client = redis_factory(private_server.url)
    await asyncio.to_thread(private_server.reset_stats)
    task = asyncio.ensure_future(RedisSemaphore.attach(client, unique_name, timeout=20))
    creator = None
    try:

        async def attach_has_looked_twice() -> bool:
            stats = await asyncio.to_thread(private_server.commandstats)
            return stats.get("hmget", 0) >= 2

        await wait_until(attach_has_looked_twice, timeout=10)
        assert not task.done()
        assert await client.dbsize() == 0, "attach() must never create anything"
        # the creator runs in another task, on another client
        creator = await asyncio.ensure_future(
            RedisSemaphore.create(redis_factory(private_server.url), unique_name, count=7)
        )
        joined = await asyncio.wait_for(task, 10)
        try:
            assert await joined.get_count() == 7
            assert joined.name == unique_name
            for _ in range(7):
                await joined.acquire(timeout=0)
            with pytest.raises(RedisSemaphoreTimeoutError):
                await creator.acquire(timeout=0)
            for _ in range(7):
                await joined.release()
        finally:
            await joined.close()
    finally:
        task.cancel()
        if creator is not None:
            await creator.close()


async def test_attach_times_out(redis: aioredis.Redis, unique_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(RedisSemaphoreTimeoutError, match=r"attach|creat"):
        await asyncio.wait_for(RedisSemaphore.attach(redis, unique_name, timeout=0.4), 10)
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 0.4 + PROMPT, elapsed
    await assert_nothing_written(redis, unique_name)


async def test_attach_follows_the_creators_strategy(
    private_server: Any, redis_factory: Any, unique_name: str
) -> None:
    client = redis_factory(private_server.url)
    creator = await RedisSemaphore.create(
        client,
        unique_name,
        count=2,
        semaphore_init_strategy=SemaphoreInitStrategy.OPTIMISTIC_LOCKING,
    )
    joined = await RedisSemaphore.attach(client, unique_name, timeout=5)
    try:
        assert joined.strategy is SemaphoreInitStrategy.OPTIMISTIC_LOCKING
        await asyncio.to_thread(private_server.reset_stats)
        await joined.acquire(timeout=5)
        await joined.release()
        async with joined:
            pass
        stats = await asyncio.to_thread(private_server.commandstats)
        scripting = {c for c in stats if c.startswith(("eval", "fcall", "script", "function"))}
        assert not scripting, f"an OPTIMISTIC_LOCKING semaphore ran scripts: {scripting}"
        assert stats.get("exec", 0) >= 1, stats
    finally:
        await joined.close()
        await creator.close()


async def test_attach_to_a_lua_semaphore_uses_lua(
    private_server: Any, redis_factory: Any, unique_name: str
) -> None:
    client = redis_factory(private_server.url)
    creator = await RedisSemaphore.create(client, unique_name, count=2)
    joined = await RedisSemaphore.attach(client, unique_name, timeout=5)
    try:
        assert joined.strategy is SemaphoreInitStrategy.LUA
        await asyncio.to_thread(private_server.reset_stats)
        await joined.acquire(timeout=5)
        await joined.release()
        stats = await asyncio.to_thread(private_server.commandstats)
        assert stats.get("evalsha", 0) + stats.get("eval", 0) >= 1, stats
    finally:
        await joined.close()
        await creator.close()


async def test_get_count(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=4)
    try:
        assert await sem.get_count() == 4
        await sem.acquire(timeout=0)
        assert await sem.get_count() == 4, "the count is the size, not what is free"
        await sem.release()
    finally:
        await sem.close()


async def test_get_count_of_an_unknown_semaphore_is_none(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=4)
    try:
        await redis.delete(*await keys_of(redis, unique_name))
        assert await sem.get_count() is None
    finally:
        await sem.close()
    # and an instance under another name than the one created reads None too
    other = await RedisSemaphore.create(redis, unique_name + "-other", count=1)
    try:
        assert await other.get_count() == 1
        await redis.delete(*await keys_of(redis, unique_name + "-other"))
        assert await other.get_count() is None
    finally:
        await other.close()
