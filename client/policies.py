"""Retry and polling schedules, kept pure so they are easy to reason about and test."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from .constants import (
    INITIAL_RETRY_DELAY_S,
    MAX_POLL_INTERVAL_S,
    MAX_RETRIES,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_DELAY_S,
    POLL_GROWTH,
    POLL_INTERVAL_S,
    RETRY_JITTER,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently failed HTTP requests are retried."""

    max_retries: int = MAX_RETRIES
    initial_delay_s: float = INITIAL_RETRY_DELAY_S
    max_delay_s: float = MAX_RETRY_DELAY_S
    jitter: float = RETRY_JITTER
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, retry_number: int, retry_after: str | None = None) -> float:
        """Seconds to sleep before retry ``retry_number`` (0-based).

        A parseable ``Retry-After`` wins (capped at ``max_retry_after_s``);
        otherwise exponential backoff, with jitter so that many clients hit by
        the same outage do not retry in lockstep.
        """
        server_delay = parse_retry_after(retry_after)
        if server_delay is not None:
            return min(server_delay, self.max_retry_after_s)
        backoff = min(self.initial_delay_s * 2.0**retry_number, self.max_delay_s)
        return backoff * (1 - self.jitter * random.random())


@dataclass(frozen=True)
class PollPolicy:
    """Interval between /status or /stream polls: quick at first, then backing off."""

    initial_s: float = POLL_INTERVAL_S
    max_s: float = MAX_POLL_INTERVAL_S
    growth: float = POLL_GROWTH

    def intervals(self) -> Iterator[float]:
        interval = self.initial_s
        while True:
            yield interval
            interval = min(interval * self.growth, self.max_s)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
