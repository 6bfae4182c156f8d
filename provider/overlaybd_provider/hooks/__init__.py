"""Airflow hooks: registry connections and the dedup database."""
