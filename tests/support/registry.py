"""Test-support plugin: registry fixtures (filled in by its test area)."""
