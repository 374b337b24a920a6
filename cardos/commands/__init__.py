"""Command handlers, grouped by what they act on; importing this package registers them all."""

from __future__ import annotations

from cardos.commands import files, personalise, psam, purse, security

__all__ = ["files", "personalise", "psam", "purse", "security"]
