"""clearing."""
