"""How engine errors end an Airflow task: one clear line, no traceback, and a retry only when a
retry can help.

Engine errors are :class:`~overlaybd_provider.errors.OverlaybdError` one-liners that say whether
they are transient (``retryable``: a registry that is down, a lost database connection) or not
(auth refused, not found, a bad reference or option, a corrupt or lying source, a TLS mismatch).
The operator logs the line at ERROR level and ends the task with :class:`TaskError`, which the
task runner reports as one line ("Task exited", no traceback: it is a ``SystemExit``), and the
operators' :class:`OverlaybdRetryPolicy` (Airflow 3.3 retry policies) fails a permanent error at
once and retries a transient one (after the registry's ``Retry-After`` when it sent one). Other
exceptions (a bug, a killed process) keep Airflow's usual retry behaviour and traceback.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

from overlaybd_provider.errors import OverlaybdError, message_for, storage_error

__all__ = ["OverlaybdRetryPolicy", "TaskError", "engine_errors"]

log = logging.getLogger(__name__)


class TaskError(SystemExit):
    """The task's end, carrying the engine's one line and whether a retry may help."""

    def __init__(self, line: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(line)
        self.line = line
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.line


class OverlaybdRetryPolicy(RetryPolicy):
    """Permanent engine errors fail at once; transient ones retry; anything else: Airflow's default."""

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int,
                 context: Any = None) -> RetryDecision:
        retryable = getattr(exception, "retryable", None)
        if not isinstance(exception, (TaskError, OverlaybdError)) or retryable is None:
            return RetryDecision.default()
        if not retryable:
            return RetryDecision.fail(reason="a retry cannot fix this (see the error line above)")
        after = getattr(exception, "retry_after", None)
        delay = timedelta(seconds=float(after)) if after else None
        return RetryDecision.retry(delay=delay, reason="transient: retrying")

    def serialize(self) -> dict[str, Any]:
        return {"__type": "OverlaybdRetryPolicy"}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> OverlaybdRetryPolicy:
        return cls()


@contextlib.contextmanager
def engine_errors(task_log: Any, what: str) -> Iterator[None]:
    """Turn an engine error into :class:`TaskError` after logging its one line (Airflow wording:
    connection extras and operator arguments instead of CLI flags)."""
    try:
        try:
            yield
        except OSError as exc:  # a disk full or read-only where no path was attached: still one line
            error = storage_error(exc)
            if error is None:
                raise
            raise error from None
    except OverlaybdError as exc:
        line = f"{what}: {message_for(exc, 'airflow')}"
        kind = "transient, will retry" if exc.retryable else "permanent, not retried"
        task_log.error("%s (%s)", line, kind)
        raise TaskError(line, retryable=exc.retryable,
                        retry_after=getattr(exc, "retry_after", None)) from None
