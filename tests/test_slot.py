"""A semaphore slot's state (``redsync.semaphore._slot``): one phase, legal
transitions only, and checks that keep a slot from reuse until a renewal."""

from __future__ import annotations

import itertools

import pytest

from redsync.semaphore._slot import _NEXT, Check, Holding, Phase, Slot


def _slot_in(phase: Phase) -> Slot:
    slot = Slot("m", "k")
    path = {
        Phase.FREE: [],
        Phase.RESERVED: [Phase.RESERVED],
        Phase.WAITING: [Phase.RESERVED, Phase.WAITING],
        Phase.HELD: [Phase.RESERVED, Phase.HELD],
        Phase.RELEASING: [Phase.RESERVED, Phase.HELD, Phase.RELEASING],
    }[phase]
    for step in path:
        _go(slot, step)
    return slot


def _go(slot: Slot, phase: Phase) -> None:
    holding = Holding("g:1", slot) if phase is Phase.HELD else None
    slot.to(phase, holding=holding, token="g:1" if phase is Phase.RELEASING else None)


@pytest.mark.parametrize("start,end", list(itertools.product(Phase, Phase)))
def test_only_the_listed_transitions_are_allowed(start: Phase, end: Phase) -> None:
    slot = _slot_in(start)
    epoch = slot.epoch
    if end in _NEXT[start]:
        _go(slot, end)
        assert slot.phase is end
        assert slot.epoch == epoch + 1, "every transition counts"
        assert (slot.holding is not None) == (end is Phase.HELD)
        assert (slot.releasing is not None) == (end is Phase.RELEASING)
    else:
        with pytest.raises(AssertionError, match=f"{start.name} -> {end.name}"):
            _go(slot, end)
        assert slot.phase is start and slot.epoch == epoch, "a refused transition changes nothing"


def test_held_needs_its_holding_and_releasing_its_token() -> None:
    slot = _slot_in(Phase.RESERVED)
    with pytest.raises(AssertionError):
        slot.to(Phase.HELD)
    with pytest.raises(AssertionError):
        slot.to(Phase.FREE, token="g:1")
    assert slot.phase is Phase.RESERVED


def test_leaving_a_wait_forgets_its_ticket_number() -> None:
    slot = _slot_in(Phase.WAITING)
    slot.number = "7"
    slot.early.append(("g:1", "7", ""))
    slot.fence = ("g:1", "12")
    slot.to(Phase.RESERVED)
    assert slot.number is None and slot.early == [] and slot.fence is None


def test_a_check_keeps_a_free_slot_from_reuse_and_counts_as_a_change() -> None:
    slot = Slot("m", "k")
    assert slot.free
    epoch = slot.epoch
    slot.mark(Check.CONTENT | Check.TICKET)
    assert not slot.free and slot.phase is Phase.FREE
    assert slot.epoch == epoch + 1, "a renewal in flight must not clear a newer mark"
    slot.checks &= ~Check.TICKET
    assert not slot.free
    slot.checks &= ~Check.CONTENT
    assert slot.free
