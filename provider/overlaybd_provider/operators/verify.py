"""``OverlaybdVerifyOperator``: prove a converted image right (``overlaybd verify`` as a task).

One call of :func:`overlaybd_provider.verify.verify_image`. XCom is the report's small summary
(counts per category, the summary line). A difference fails the task at once with its summary
line (no retry: the image will not get better by asking again); errors such as an unreachable
registry are transient engine errors and retry.
"""

from __future__ import annotations

from typing import Any

from overlaybd_provider.operators.base import OverlaybdBaseOperator, as_platforms
from overlaybd_provider.operators.failures import TaskError


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
        from overlaybd_provider.verify import VerifyOptions, verify_image

        self.label_image(context, self.destination)
        work = self.verify_work_dir or str(self.work_dir() / "verify")
        with self.engine_call(f"verify {self.destination}"):
            options = VerifyOptions(platforms=tuple(as_platforms(self.platforms)), fsck=str(self.fsck),
                                    sample=float(self.sample), work_dir=work)
            report = verify_image(self.source, self.destination, options,
                                  src_registry=self.registry_options(self.source, self.src_registry_conn_id),
                                  dst_registry=self.registry_options(self.destination, self.dst_registry_conn_id))
        for line in report.lines(max_diffs=20):
            self.log.info("%s", line)
        if not report.identical:
            line = f"verify {self.destination}: {report.summary_line()}"
            self.log.error("%s (permanent, not retried)", line)
            raise TaskError(line, retryable=False)
        return report.summary()
