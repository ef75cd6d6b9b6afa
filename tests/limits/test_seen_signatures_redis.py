"""Seen bce-auth-v1 signatures kept in Redis: two gateways sharing one Redis refuse each other's replays.

Here beside the Redis limiter tests for their private redis-server fixture.
"""

from __future__ import annotations

import pytest

from qfserve.auth.replay import RedisSeenSignatures, make_seen_signatures
from qfserve.protocol.errors import QianfanError


async def test_two_gateways_share_what_they_have_seen(redis_url):
    first, second = RedisSeenSignatures(redis_url), make_seen_signatures(redis_url)
    assert isinstance(second, RedisSeenSignatures)
    try:
        assert await first.first_use("ak/sig-shared", 60)
        assert not await second.first_use("ak/sig-shared", 60)  # replayed at another gateway
        assert await second.first_use("ak/sig-other", 60)
        await first.forget("ak/sig-other")  # refused with a code the SDK retries: resendable anywhere
        assert await second.first_use("ak/sig-other", 60)
    finally:
        await first.close()
        await second.close()


async def test_redis_down_fails_closed_with_a_retryable_code():
    seen = RedisSeenSignatures("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(QianfanError) as caught:
            await seen.first_use("ak/sig", 60)
        assert caught.value.code == 2
    finally:
        await seen.close()
