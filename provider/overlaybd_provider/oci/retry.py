"""Retry policy: exponential back-off with full jitter, bounded by attempts and by total time.

Retried: connection failures and resets, timeouts, HTTP 408/429/5xx (``Retry-After`` honoured,
clipped to the remaining budget). Jitter only spreads request timing; it never reaches output.
oras-py's ``decorator.retry`` retries only exceptions and status 500, with fixed ``2 + 3**n`` s sleeps
and no total budget, so it is not used.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import requests
import urllib3

from overlaybd_provider.oci.options import RegistryOptions

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,  # raised by raw streams (Connection broken, IncompleteRead)
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryState:
    """Bookkeeping of one logical request across its attempts."""

    max_retries: int
    budget: float
    backoff: float
    max_delay: float
    attempts: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str = ""
    furthest: int = 0

    def progress(self, position: int) -> None:
        """A long transfer confirmed bytes up to ``position``: new ground (beyond any position
        reached before) restores the full attempt count and time budget, so a large blob on a slow
        link is not failed by faults spread over its whole duration. Ground already covered
        (after a restart from byte 0) restores nothing, which bounds the total work."""
        if position > self.furthest:
            self.furthest = position
            self.attempts = 0
            self.started = time.monotonic()

    @classmethod
    def from_options(cls, options: RegistryOptions) -> RetryState:
        return cls(options.max_retries, options.retry_budget, options.retry_backoff, options.retry_max_delay)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before the next attempt, or ``None`` when the budget is spent."""
        self.attempts += 1
        if self.attempts > self.max_retries:
            return None
        remaining = self.budget - self.elapsed
        if retry_after is not None:
            delay = retry_after
        else:
            delay = random.uniform(0, min(self.max_delay, self.backoff * (2 ** (self.attempts - 1))))
        if delay > remaining:
            return None
        return delay

    def wait(self, retry_after: float | None = None) -> bool:
        """Sleep before the next attempt; ``False`` when no attempt is left."""
        delay = self.next_delay(retry_after)
        if delay is None:
            return False
        time.sleep(delay)
        return True

    def summary(self) -> str:
        return f"gave up after {self.attempts} attempt(s) in {self.elapsed:.1f} s"
