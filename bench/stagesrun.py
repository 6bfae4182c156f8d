"""Run the engine stages as the nightly DAG's tasks do (pull → build → push → record), each with
its own scratch directory and only the JSON of the previous stage in hand, in one process, so the
bench can time the staged Airflow path without a scheduler.

    .venv/bin/python bench/stagesrun.py SRC DST DB_URL   # plain-HTTP registries
"""

from __future__ import annotations

import json
import sys

from overlaybd_provider.engine import stages
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.oci.options import RegistryOptions


def main(argv: list[str]) -> int:
    src, dst, db_url = argv
    opts = {"src_registry": RegistryOptions(plain_http=True), "dst_registry": RegistryOptions(plain_http=True)}
    dedup = open_dedup(db_url)

    def xcom(doc: dict) -> dict:
        return json.loads(json.dumps(doc))

    try:
        conversion = xcom(stages.pull(src, dst, dedup=dedup, **opts))
        conversion = xcom(stages.build(conversion, dedup=dedup, **opts))
        conversion = xcom(stages.push(conversion, **opts))
        stages.record(conversion, dedup=dedup)
    finally:
        dedup.close()
    print(conversion["pushed"]["digest"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
