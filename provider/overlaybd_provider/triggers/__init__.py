"""Deferrable triggers (run in the Airflow triggerer)."""
