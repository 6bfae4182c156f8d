"""Test-support plugin: mariadb fixtures (filled in by its test area)."""
