"""Rate limits (issue #7): token buckets, in Redis when ``ONECARD_REDIS_URL`` is set, else in process memory.

A :class:`Rule` is a bucket of ``capacity`` tokens refilled at ``per_second``; each request takes one. Redis keeps
one hash per bucket, updated by one Lua script on the server's clock, so every worker and host shares the
bucket. When Redis does not answer, the limiter falls back to its in-memory buckets (and logs it) rather than
refusing every log-in.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from backoffice.errors import RateLimited

log = logging.getLogger("onecard.api.ratelimit")

MAX_MEMORY_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class Rule:
    """A token bucket: ``capacity`` requests at once, refilled at ``per_second``."""

    name: str
    capacity: int
    per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.per_second <= 0:
            raise ValueError("a rate rule needs capacity >= 1 and a positive refill rate")

    @classmethod
    def parse(cls, name: str, text: str) -> Rule:
        """``"capacity/per_second"``, e.g. ``"10/0.2"`` (10 at once, one more every 5 s)."""
        try:
            capacity, _, rate = text.partition("/")
            return cls(name, int(capacity), float(rate))
        except ValueError:
            raise ValueError(f"a rate limit is CAPACITY/PER_SECOND, not {text!r}") from None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The rules the API applies."""

    login_per_user: Rule = Rule("login_user", 10, 0.2)
    """Ten log-in attempts per username, then one every 5 s."""
    login_per_client: Rule = Rule("login_client", 30, 1.0)
    """Thirty log-in attempts per client address, then one a second."""
    money: Rule = Rule("money", 30, 2.0)
    """Money-moving requests per member of staff: 30 at once, then two a second (a desk serves one resident)."""

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> RateLimits:
        """The defaults, each overridden by ``ONECARD_RATE_LOGIN_USER``, ``ONECARD_RATE_LOGIN_CLIENT`` or
        ``ONECARD_RATE_MONEY`` (``CAPACITY/PER_SECOND``)."""
        values = dict(os.environ) if env is None else env
        default = cls()
        return cls(
            Rule.parse("login_user", values["ONECARD_RATE_LOGIN_USER"])
            if values.get("ONECARD_RATE_LOGIN_USER")
            else default.login_per_user,
            Rule.parse("login_client", values["ONECARD_RATE_LOGIN_CLIENT"])
            if values.get("ONECARD_RATE_LOGIN_CLIENT")
            else default.login_per_client,
            Rule.parse("money", values["ONECARD_RATE_MONEY"]) if values.get("ONECARD_RATE_MONEY") else default.money,
        )


class RateLimiter(Protocol):
    """Takes a token from a bucket."""

    def take(self, rule: Rule, key: str) -> float:
        """0.0 when allowed; otherwise the seconds until a token is available (nothing taken)."""
        ...


class MemoryRateLimiter:
    """Token buckets in this process (one API process, or no Redis)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, rule: Rule, key: str) -> float:
        """Take one token from ``rule``'s bucket for ``key``."""
        bucket = f"{rule.name}:{key}"
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(bucket, (float(rule.capacity), now))
            tokens = min(float(rule.capacity), tokens + (now - at) * rule.per_second)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rule.per_second
            self._buckets[bucket] = (tokens, now)
            while len(self._buckets) > MAX_MEMORY_BUCKETS:
                self._buckets.popitem(last=False)
            return wait


_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = capacity; at = now end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets shared through Redis (every worker and host), falling back to memory when Redis fails."""

    def __init__(self, url: str, *, prefix: str = "onecard:rate:") -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(_SCRIPT)
        self._prefix = prefix
        self._fallback = MemoryRateLimiter()

    def take(self, rule: Rule, key: str) -> float:
        """Take one token from the shared bucket (or the in-memory one when Redis does not answer)."""
        try:
            answer = self._script(keys=[f"{self._prefix}{rule.name}:{key}"], args=[rule.capacity, rule.per_second])
            return float(answer.decode() if isinstance(answer, bytes) else answer)
        except Exception as exc:  # Redis down or misconfigured: keep limiting, locally
            log.warning("rate limiter: Redis failed (%s); limiting in memory", exc.__class__.__name__)
            return self._fallback.take(rule, key)

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self._client.ping())
        except Exception:
            return False


def limiter_for(redis_url: str | None) -> MemoryRateLimiter | RedisRateLimiter:
    """Redis when configured, else memory."""
    return RedisRateLimiter(redis_url) if redis_url else MemoryRateLimiter()


def enforce(limiter: RateLimiter, rule: Rule, key: str) -> None:
    """Raise :class:`RateLimited` (429, ``retry_after`` in whole seconds) when the bucket is empty."""
    wait = limiter.take(rule, key)
    if wait > 0:
        raise RateLimited("too many requests: slow down", retry_after=max(1, math.ceil(wait)), limit=rule.name)
