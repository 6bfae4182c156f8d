"""Test-support plugin: fsjudge fixtures (filled in by its test area)."""
