"""Run the engine stages in one process, as ``OverlaybdConvertOperator`` does inside an Airflow
task (pull → build → compress → push → record, a staging directory in between), so the bench can
time the Airflow path without a scheduler.

    .venv/bin/python bench/stagesrun.py SRC DST DB_URL   # plain-HTTP registries
"""

from __future__ import annotations

import sys
import tempfile

from overlaybd_provider.engine import stages
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.oci.options import RegistryOptions


def main(argv: list[str]) -> int:
    src, dst, db_url = argv
    registry = RegistryOptions(plain_http=True)
    dedup = open_dedup(db_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stages-") as staging:
            stages.pull(src, dst, staging, src_registry=registry, dst_registry=registry, dedup=dedup)
            stages.build(staging)
            stages.compress(staging)
            pushed = stages.push(staging, dst_registry=registry)
            stages.record(staging, dedup=dedup)
    finally:
        dedup.close()
    print(pushed["digest"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
