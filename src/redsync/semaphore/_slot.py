"""A slot's state: one phase with legal transitions, and what a renewal must check.

A slot is a list in Redis that holds at most one permit token (the lease
record of one acquisition, see ARCHITECTURE.md).  Here, on the instance's
side, its state is two things, kept apart because they change for
different reasons:

* its :class:`Phase`: who has the slot and what it holds, as far as this
  instance knows.  Exactly one at a time; :meth:`Slot.to` allows only the
  transitions in ``_NEXT`` and counts each one in :attr:`Slot.epoch`;
* its :class:`Check` marks: what the next renewal must look at before the
  slot may be used again, because a reply was lost or a stale ticket of it
  may still be queued.  They are independent of the phase: a mark set while
  the slot is held still keeps it from reuse after the release.

A renewal snapshots ``(epoch, phase)`` of each slot it sends, and applies
what it finds to a slot only if its epoch has not moved since: no
transition ran while the reply was on its way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "Holding", "Phase", "Slot"]


class Phase(enum.Enum):
    """Who has a slot, and what it holds."""

    #: Empty and unclaimed: the next acquisition may take it.
    FREE = "free"
    #: Claimed by one task: its lease is being renewed, a move into it is in
    #: flight, or its wait is leaving the queue.  Renewals leave it alone.
    RESERVED = "reserved"
    #: Its ticket waits in the semaphore's queue; a release hands the next
    #: permit straight into it.
    WAITING = "waiting"
    #: Holds the permit :attr:`Slot.holding`.
    HELD = "held"
    #: The release of the token :attr:`Slot.releasing` is in flight.
    RELEASING = "releasing"


#: The legal transitions.  FREE -> HELD is a renewal adopting an orphan (a
#: token a lost reply left in the slot); HELD -> FREE drops a lost permit.
_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.FREE: frozenset({Phase.RESERVED, Phase.HELD}),
    Phase.RESERVED: frozenset({Phase.FREE, Phase.WAITING, Phase.HELD}),
    Phase.WAITING: frozenset({Phase.FREE, Phase.RESERVED, Phase.HELD}),
    Phase.HELD: frozenset({Phase.FREE, Phase.RELEASING}),
    Phase.RELEASING: frozenset({Phase.FREE}),
}


class Check(enum.Flag):
    """What the next renewal must look at before the slot is used again."""

    NONE = 0
    #: What the slot holds is unknown: a move's or a release's reply was
    #: lost, or a permit may be handed to it through a stale ticket.  The
    #: renewal adopts a token it finds there.
    CONTENT = enum.auto()
    #: A ticket of this slot may still be queued for a wait that ended: the
    #: renewal drops it.
    TICKET = enum.auto()


@dataclass(eq=False)
class Holding:
    """One permit held by the instance, in one slot."""

    token: str
    slot: Slot
    #: Who acquired it: a task, or a thread of the blocking facade.
    owner: object = None
    lost: bool = False
    #: Its key in ``RedisSemaphore._held``: the token, unless it had to make room.
    key: str = ""
    #: Replies to ``RedisSemaphore._take_extra`` sent with the take (if it was one).
    extra: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class Slot:
    """The instance's view of one slot.  See the module docstring."""

    member: str
    key: str
    phase: Phase = Phase.FREE
    checks: Check = Check.NONE
    #: Counts transitions, so a renewal can tell whether one ran meanwhile.
    epoch: int = 0
    #: Set in phase HELD.
    holding: Holding | None = None
    #: Set in phase RELEASING.
    releasing: str | None = None
    #: Registered under a lease in the ``holders`` set (by a renewal).
    registered: bool = False
    #: Loop time at which the last renewal that confirmed its lease was sent:
    #: the lease runs at least ``lease_ttl`` from then.
    renewed_at: float = -1e18
    #: Queued in ``RedisSemaphore._maybe_free`` (bookkeeping, not state).
    queued: bool = False
    #: In phase WAITING: the number of the ticket the wait queued (None: not
    #: known yet), and notices (token, number, fence) that came before it was
    #: known.
    number: str | None = None
    early: list[tuple[str, str, str]] = field(default_factory=list)
    #: In phase WAITING: (token, fence) of a lock's hand-off notice.
    fence: tuple[str, str] | None = None

    @property
    def free(self) -> bool:
        """May be taken by the next acquisition."""
        return self.phase is Phase.FREE and not self.checks

    def to(self, phase: Phase, *, holding: Holding | None = None, token: str | None = None) -> None:
        """Move to ``phase`` (``holding`` for HELD, ``token`` for RELEASING).

        An illegal transition is a bug in this library: it raises instead of
        leaving the slot in a state no other code expects.
        """
        if phase not in _NEXT[self.phase]:
            raise AssertionError(f"slot {self.member}: {self.phase.name} -> {phase.name}")
        if (phase is Phase.HELD) != (holding is not None) or (phase is Phase.RELEASING) != (
            token is not None
        ):
            raise AssertionError(f"slot {self.member}: {phase.name} with {holding!r}, {token!r}")
        if self.phase is Phase.WAITING:
            self.number = None
            self.early.clear()
            self.fence = None
        self.phase = phase
        self.holding = holding
        self.releasing = token
        self.epoch += 1

    def mark(self, checks: Check) -> None:
        """Leave ``checks`` to the next renewal (and keep the slot from reuse meanwhile)."""
        self.checks |= checks
        self.epoch += 1
