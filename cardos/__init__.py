"""cardos."""
