"""Fixtures for tests that need real PC/SC: pcscd with the vsmartcard vpcd driver, and its card slots."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from services import require_services

from simulators.pcscd import Pcscd, PcscdUnavailable, ensure_pcscd, vpcd_lock
from simulators.vpcd import VpcdSlot
from terminal.errors import WaitTimeout
from terminal.reader import wait_for_removal


@pytest.fixture(scope="session")
def pcscd() -> Iterator[Pcscd]:
    """pcscd serving ``Virtual PCD 00 00`` and ``00 01``: reused if running, else started (and stopped).

    Holds the machine-wide vpcd lock for the whole session, so concurrent test runs take turns.
    Skips when pcscd or the vpcd driver is not installed, unless services are required (CI,
    ``scripts/test.sh``); fails when pcscd is installed but does not come up.
    """
    with vpcd_lock():
        try:
            handle = ensure_pcscd()
        except PcscdUnavailable as exc:
            if require_services():
                pytest.fail(f"PC/SC tests need pcscd and vsmartcard-vpcd: {exc}")
            pytest.skip(f"PC/SC tests need pcscd and vsmartcard-vpcd: {exc}")
        yield handle
        handle.stop()


def _slot(number: int) -> Iterator[VpcdSlot]:
    slot = VpcdSlot(number, connect_timeout=5.0)
    # Start from an empty reader, as pcscd sees it.
    wait_for_removal(slot.reader_name, 5.0)
    try:
        yield slot
    finally:
        slot.close()
        try:
            wait_for_removal(slot.reader_name, 5.0)
        except WaitTimeout:
            pytest.fail(f"{slot.reader_name}: pcscd still sees a card after the test")


@pytest.fixture
def vpcd_slot(pcscd: Pcscd) -> Iterator[VpcdSlot]:
    """vpcd slot 0 (``Virtual PCD 00 00``), emptied after the test."""
    yield from _slot(0)


@pytest.fixture
def vpcd_slot1(pcscd: Pcscd) -> Iterator[VpcdSlot]:
    """vpcd slot 1 (``Virtual PCD 00 01``, the terminal's PSAM slot), emptied after the test."""
    yield from _slot(1)
