"""PC/SC fixtures shared by ``tests/integration`` and ``tests/e2e``: pcscd with the vpcd driver, and its slots.

Both conftests import the fixtures from here. Each conftest registers its own copy of the session-scoped
``pcscd`` fixture, so in a run of the whole suite both copies are alive at once; they share one holding of
the machine-wide vpcd lock (and one pcscd handle) through :data:`_SHARED`, since a second ``flock`` on the
lock file from the same process would wait for the first one forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from services import require_services

from simulators.pcscd import Pcscd, PcscdUnavailable, ensure_pcscd, vpcd_lock
from simulators.vpcd import VpcdSlot
from terminal.errors import WaitTimeout
from terminal.reader import wait_for_removal


class _SharedPcscd:
    """One holding of the vpcd lock and one pcscd handle for every ``pcscd`` fixture of this process."""

    def __init__(self) -> None:
        self._users = 0
        self._stack: contextlib.ExitStack | None = None
        self._handle: Pcscd | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[Pcscd]:
        if self._users == 0:
            stack = contextlib.ExitStack()
            stack.enter_context(vpcd_lock())
            try:
                handle = ensure_pcscd()
            except PcscdUnavailable as exc:
                stack.close()
                if require_services():
                    pytest.fail(f"PC/SC tests need pcscd and vsmartcard-vpcd: {exc}")
                pytest.skip(f"PC/SC tests need pcscd and vsmartcard-vpcd: {exc}")
            except BaseException:
                stack.close()
                raise
            stack.callback(handle.stop)  # runs before the lock is released
            self._stack, self._handle = stack, handle
        assert self._handle is not None
        self._users += 1
        try:
            yield self._handle
        finally:
            self._users -= 1
            if self._users == 0 and self._stack is not None:
                stack, self._stack, self._handle = self._stack, None, None
                stack.close()


_SHARED = _SharedPcscd()


@pytest.fixture(scope="session")
def pcscd() -> Iterator[Pcscd]:
    """pcscd serving ``Virtual PCD 00 00`` and ``00 01``: reused if running, else started (and stopped).

    Holds the machine-wide vpcd lock for the whole session, so concurrent test runs take turns.
    Skips when pcscd or the vpcd driver is not installed, unless services are required (CI,
    ``scripts/test.sh``); fails when pcscd is installed but does not come up.
    """
    with _SHARED.hold() as handle:
        yield handle


@contextlib.contextmanager
def vpcd_slot_in_use(number: int) -> Iterator[VpcdSlot]:
    """vpcd slot ``number``, empty as pcscd sees it at the start, emptied (and checked) at the end."""
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
    with vpcd_slot_in_use(0) as slot:
        yield slot


@pytest.fixture
def vpcd_slot1(pcscd: Pcscd) -> Iterator[VpcdSlot]:
    """vpcd slot 1 (``Virtual PCD 00 01``, the terminal's PSAM slot), emptied after the test."""
    with vpcd_slot_in_use(1) as slot:
        yield slot
