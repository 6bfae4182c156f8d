"""Test-support plugins (fixtures and oracles shared across test areas)."""
