"""Sensors (deferrable: they wait in the triggerer)."""
