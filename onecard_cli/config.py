"""Configuration of the command line: the back office's settings (cli.md, "Configuration")."""

from __future__ import annotations

from backoffice.settings import Settings

__all__ = ["Settings"]
