"""Fixtures for tests that need real PC/SC: pcscd with the vsmartcard vpcd driver, and its card slots.

They live in ``tests/pcsc_fixtures.py``, shared with ``tests/e2e``.
"""

from __future__ import annotations

from pcsc_fixtures import pcscd, vpcd_slot, vpcd_slot1

__all__ = ["pcscd", "vpcd_slot", "vpcd_slot1"]
