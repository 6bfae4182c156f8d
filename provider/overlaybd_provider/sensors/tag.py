"""Wait for an image tag to appear, or to point at another digest, without holding a worker slot.

``OciTagSensor(reference="registry:5000/team/app:v2")`` succeeds once the tag exists;
with ``digest_not="sha256:..."`` once the tag points elsewhere. Deferrable by default: the
check runs once in the worker, then :class:`~overlaybd_provider.triggers.tag_watch.OciTagWatchTrigger`
polls from the triggerer (the state it compares with is in its kwargs, so a triggerer restart
resumes the same wait). The XCom is ``{"reference", "tag", "digest", "previous"}``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from overlaybd_provider.oci.reference import parse_reference
from overlaybd_provider.triggers.tag_watch import OciTagWatchTrigger


class OciTagSensor(BaseSensorOperator):
    """:param reference: ``registry/repo:tag``
    :param digest_not: succeed only when the tag's digest differs from this one
    :param registry_conn_id: ``oci_registry`` connection
    :param poke_interval: seconds between checks (also the trigger's poll interval)
    :param max_backoff: the trigger's back-off ceiling after registry errors
    """

    template_fields = ("reference", "digest_not", "registry_conn_id")
    ui_color = "#e7f0fd"

    def __init__(
        self,
        *,
        reference: str,
        digest_not: str | None = None,
        registry_conn_id: str | None = None,
        deferrable: bool = True,
        max_backoff: float = 900.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 60)
        super().__init__(**kwargs)
        self.reference = reference
        self.digest_not = digest_not
        self.registry_conn_id = registry_conn_id
        self.deferrable = deferrable
        self.max_backoff = max_backoff

    def _parts(self) -> tuple[str, str]:
        ref = parse_reference(str(self.reference), default_tag=None)
        if ref.is_layout or not ref.tag or ref.digest:
            raise AirflowException(f"{self.task_id}: reference must be registry/repo:tag, got {self.reference!r}")
        return f"{ref.registry}/{ref.repository}", ref.tag

    def _trigger(self, known: dict[str, str]) -> OciTagWatchTrigger:
        repository, tag = self._parts()
        return OciTagWatchTrigger(
            repository=repository,
            registry_conn_id=self.registry_conn_id or None,
            tags=[tag],
            poll_interval=float(self.poke_interval),
            max_backoff=max(float(self.max_backoff), float(self.poke_interval)),
            initial="all",
            once=True,
            known=known,
        )

    def _current(self) -> str | None:
        _, tag = self._parts()
        trigger = self._trigger({})
        try:
            return trigger.snapshot().get(tag)
        finally:
            trigger.close()

    def _done(self, digest: str | None) -> bool:
        return digest is not None and digest != (self.digest_not or None)

    def _result(self, digest: str, previous: str | None) -> dict[str, Any]:
        _, tag = self._parts()
        return {"reference": str(self.reference), "tag": tag, "digest": digest, "previous": previous}

    def poke(self, context: Any) -> bool | Any:
        digest = self._current()
        if self._done(digest):
            return PokeReturnValue(is_done=True, xcom_value=self._result(str(digest), self.digest_not))
        return False

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        digest = self._current()
        if self._done(digest):
            return self._result(str(digest), self.digest_not)
        _, tag = self._parts()
        known = {tag: digest} if digest is not None else {}
        self.log.info("waiting for %s in the triggerer (now: %s)", self.reference, digest or "absent")
        self.defer(
            trigger=self._trigger(known),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        changes = (event or {}).get("changes") or []
        _, tag = self._parts()
        change = next((c for c in changes if c.get("tag") == tag), None)
        if change is None:
            raise AirflowException(f"{self.task_id}: the trigger fired without a change of {self.reference}")
        self.log.info("%s is now %s (was %s)", self.reference, change["digest"], change.get("previous"))
        return self._result(change["digest"], change.get("previous") or self.digest_not)
