"""The in-process seen-signature cache: once per key while it lives, bounded memory."""

from __future__ import annotations

from qfserve.auth.replay import LocalSeenSignatures, make_seen_signatures


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_key_is_good_once_until_it_expires():
    clock = Clock()
    seen = LocalSeenSignatures(clock=clock)
    assert await seen.first_use("ak/sig", 300)
    assert not await seen.first_use("ak/sig", 300)
    assert await seen.first_use("ak/other", 300)
    clock.now += 299
    assert not await seen.first_use("ak/sig", 300)
    clock.now += 2
    assert await seen.first_use("ak/sig", 300)  # expired: its signature is refused by its age anyway


async def test_forget_accepts_a_key_once_more():
    seen = LocalSeenSignatures(clock=Clock())
    assert await seen.first_use("ak/sig", 300)
    await seen.forget("ak/sig")
    assert await seen.first_use("ak/sig", 300)
    assert not await seen.first_use("ak/sig", 300)


async def test_memory_bounded_expired_first():
    clock = Clock()
    seen = LocalSeenSignatures(max_entries=10, clock=clock)
    for i in range(10):
        assert await seen.first_use(f"old-{i}", 5)
    clock.now += 10
    for i in range(10):
        assert await seen.first_use(f"new-{i}", 300)
    assert len(seen) <= 10
    assert not await seen.first_use("new-9", 300)


def test_backend_choice():
    assert isinstance(make_seen_signatures(None), LocalSeenSignatures)
