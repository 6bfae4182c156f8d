"""Convert on push: registry notifications → rules → ``overlaybd_convert`` runs.

* :mod:`.payloads` — the CNCF distribution notification envelope and Harbor webhooks (default and
  CloudEvents formats) → :class:`~.payloads.PushEvent`.
* :mod:`.rules` — repository/tag globs → destination templates and DAG-run conf; loop patterns.
* :mod:`.planner` — cheap decisions per event (what to ignore and why, which rule, which run id).
* :mod:`.inspect` — manifest checks: signatures, SBOMs, charts and overlaybd images are skipped.
* :mod:`.intake` — folds bursts, inspects and starts the runs (inside the API server).
* :mod:`.runs` — the run id and DAG-run creation through Airflow's own trigger API.

Nothing here imports Airflow at module level except :mod:`.runs`, which runs in the API server.
"""
