"""``OverlaybdVerifyOperator``: prove a converted image right (``overlaybd verify`` as a task),
and ``OverlaybdVerifyStageOperator``: the same as the optional stage between push and record.

One call of :func:`overlaybd_provider.verify.verify_image`. XCom is the report's small summary
(counts per category, the summary line). A difference fails the task at once with its summary
line (no retry: the image will not get better by asking again); errors such as an unreachable
registry are transient engine errors and retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overlaybd_provider.operators.base import OverlaybdBaseOperator, as_bool, as_platforms
from overlaybd_provider.operators.failures import TaskError
from overlaybd_provider.operators.stages import _Stage


def run_verify(op: OverlaybdBaseOperator, source: str, destination: str, *, platforms: Any = None,
               fsck: Any = "auto", sample: Any = 1.0, work_dir: str | None = None,
               src_conn: str | None = None, dst_conn: str | None = None) -> dict[str, Any]:
    """Verify ``destination`` against ``source`` for ``op``: the report's lines in its log, the
    small summary back; a difference raises a permanent :class:`TaskError` with the summary line."""
    from overlaybd_provider.verify import VerifyOptions, verify_image

    work = work_dir or str(op.work_dir() / "verify")
    with op.engine_call(f"verify {destination}"):
        options = VerifyOptions(platforms=tuple(as_platforms(platforms)), fsck=str(fsck), sample=float(sample),
                                work_dir=work)
        report = verify_image(source, destination, options,
                              src_registry=op.registry_options(source, src_conn),
                              dst_registry=op.registry_options(destination, dst_conn))
    for line in report.lines(max_diffs=20):
        op.log.info("%s", line)
    if not report.identical:
        line = f"verify {destination}: {report.summary_line()}"
        op.log.error("%s (permanent, not retried)", line)
        raise TaskError(line, retryable=False)
    return report.summary()


def verify_field(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the conversions row (the overlaybd page) keeps of a verify summary."""
    return {"identical": bool(summary.get("identical")), "differences": int(summary.get("differences") or 0),
            "summary": str(summary.get("summary") or "")}


class OverlaybdVerifyOperator(OverlaybdBaseOperator):
    """Verify ``destination`` (overlaybd) against ``source`` (the OCI image it was converted from).

    :param source: source image (``registry/repo:tag``, ``@digest``, or ``oci:PATH[:TAG]``)
    :param destination: the converted image (same forms)
    :param platforms: ``os/arch[/variant]`` list or comma string; empty = every platform
    :param fsck: ``auto`` (e2fsck when installed), ``always`` or ``never``; structural checks always run
    :param sample: fraction of the files whose content is hashed (by a hash of the path); 1 = all
    :param work_dir: where layers and the e2fsck export go (default: the temp directory)
    """

    template_fields = ("source", "destination", "platforms", "fsck", "sample", "src_registry_conn_id",
                       "dst_registry_conn_id")
    ui_color = "#e8f6e8"

    def __init__(self, *, source: str, destination: str, platforms: list[str] | str | None = None,
                 fsck: str = "auto", sample: float | str = 1.0, work_dir: str | None = None,
                 src_registry_conn_id: str | None = None, dst_registry_conn_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.platforms = platforms
        self.fsck = fsck
        self.sample = sample
        self.verify_work_dir = work_dir
        self.src_registry_conn_id = src_registry_conn_id
        self.dst_registry_conn_id = dst_registry_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        self.label_image(context, self.destination)
        return run_verify(self, self.source, self.destination, platforms=self.platforms, fsck=self.fsck,
                          sample=self.sample, work_dir=self.verify_work_dir, src_conn=self.src_registry_conn_id,
                          dst_conn=self.dst_registry_conn_id)


class OverlaybdVerifyStageOperator(_Stage):
    """**Verify** (optional, between push and record): the image just pushed — pinned to the
    digest push wrote — checked against its source with ``overlaybd verify``. A difference fails
    the task at once (not retried) with the summary line, so record never marks a wrong image
    converted; the result rides on in the conversion (``verified``) to record, the XCom and the
    overlaybd page. ``enabled`` false (a DAG param): the conversion passes through unchanged.

    :param enabled: run the check (templated: ``"{{ params.verify }}"``)
    :param fsck / sample: as for :class:`OverlaybdVerifyOperator`
    """

    template_fields = (*_Stage.template_fields, "enabled", "fsck", "sample")
    ui_color = "#e8f6e8"

    def __init__(self, *, enabled: bool | str = True, fsck: str = "auto", sample: float | str = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled
        self.fsck = fsck
        self.sample = sample

    def execute(self, context: Any) -> dict[str, Any]:
        from overlaybd_provider.oci.reference import parse_reference

        conversion = self.conversion_of()
        self.label_image(context, conversion.get("image"))
        if not as_bool(self.enabled):
            self.log.info("verify: off (DAG param verify=false)")
            return conversion
        pushed = conversion.get("pushed")
        if not pushed:
            raise TaskError(f"{self.task_id}: nothing pushed yet: run the push stage first", retryable=False)
        plan = conversion["plan"]
        target = str(parse_reference(str(pushed["target"])).with_digest(str(pushed["digest"])))
        summary = run_verify(self, plan["source"], target, platforms=self.platform or plan["options"].get("platforms"),
                             fsck=self.fsck, sample=self.sample, src_conn=self._conn("src_registry_conn_id"),
                             dst_conn=self._conn("dst_registry_conn_id"))
        return {**conversion, "verified": summary}
