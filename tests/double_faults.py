"""The RunPod double's fault injection: scripted or random HTTP errors and dropped connections.

Scripted (``inject``) or random (``random_faults``) 429 (with ``Retry-After``), 500/502/503, and
dropped connections before or after a submission is queued. Random faults never hit the same
document or job more than ``max_consecutive`` times in a row, so a client with enough retries
always gets through; every fault served is recorded in ``log`` as (route, fault, key).
"""

from __future__ import annotations

import collections
import random
import socket
import threading

from tests.double_http import Handler

STATUS_FAULTS = ("429", "500", "502", "503")
SUBMIT_ROUTES = frozenset({"run", "runsync"})
# Everything except "drop_after" can hit any route; "drop_after" only submissions.
ALL_FAULTS = STATUS_FAULTS + ("drop_before", "drop_after")


class Faults:
    """Which fault, if any, the next request to a route (about a document or job ``key``) gets."""

    def __init__(self, lock: threading.Lock) -> None:
        self.log: list[tuple[str, str, str]] = []
        self._lock = lock
        self._scripted: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ()
        self._max_consecutive = 0
        self._consecutive: collections.Counter[tuple[str, str]] = collections.Counter()
        self._rng = random.Random(0)

    def inject(self, route: str, *faults: str) -> None:
        self._scripted[route].extend(faults)

    def random(self, rate: float, kinds: tuple[str, ...], seed: int, max_consecutive: int) -> None:
        self._rate, self._kinds = rate, kinds
        self._max_consecutive = max_consecutive
        self._rng = random.Random(seed)

    def next(self, route: str, key: str) -> str | None:
        with self._lock:
            fault = None
            if self._scripted[route]:
                fault = self._scripted[route].popleft()
            elif self._rate and self._consecutive[(route, key)] < self._max_consecutive:
                kinds = [kind for kind in self._kinds if kind != "drop_after" or route in SUBMIT_ROUTES]
                if kinds and self._rng.random() < self._rate:
                    fault = self._rng.choice(kinds)
            if fault is None:
                self._consecutive[(route, key)] = 0
            else:
                self._consecutive[(route, key)] += 1
                self.log.append((route, fault, key))
            return fault


def drop(handler: Handler) -> None:
    """Close the socket without answering, as a crashed proxy or a network cut would."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
