"""Where things are in the Airflow 3.3 UI, as paths relative to the UI's base URL.

Relative (no leading slash) so that they resolve against the UI's ``<base href>`` behind a
reverse proxy with a path prefix. Patterns are the UI's router routes: ``dags/:dagId/runs/:runId``
and ``dags/:dagId/runs/:runId/tasks/:taskId[/mapped/:mapIndex]`` (the task instance page opens
on its log; ``?try_number=`` picks the try).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

URL_PREFIX = "/overlaybd"
PAGE_ROUTE = "overlaybd"  # the React app's url_route: the page is at plugin/overlaybd


def _seg(value: str) -> str:
    return quote(value, safe="")


def page_url(image: str | None = None) -> str:
    """The overlaybd page, optionally filtered on one image (source or target reference)."""
    return f"plugin/{PAGE_ROUTE}" + (f"?{urlencode({'image': image})}" if image else "")


def dag_run_url(dag_id: str, run_id: str) -> str | None:
    if not dag_id or not run_id:
        return None
    return f"dags/{_seg(dag_id)}/runs/{_seg(run_id)}"


def task_instance_url(
    dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 0
) -> str | None:
    """The task instance page (its log tab), of the mapped instance when ``map_index >= 0``."""
    run = dag_run_url(dag_id, run_id)
    if run is None or not task_id:
        return None
    url = f"{run}/tasks/{_seg(task_id)}"
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{int(map_index)}"
    if try_number and try_number > 0:
        url += f"?try_number={int(try_number)}"
    return url
