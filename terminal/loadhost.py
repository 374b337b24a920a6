"""A load host backed by an issuer key file: verifies MAC1, computes MAC2, checks the TAC (spec §2.4, Load).

Used by ``onecard card load`` until the back office serves loads; the back office implements the same
:class:`~terminal.purse.LoadHost` interface with its keystore and database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from cardos import crypto
from cardos.batch import BatchRecord, RecordStatus
from cardos.keyfile import IssuerKeys
from cardos.layout import KeyUsage
from terminal.errors import HostRefused
from terminal.purse import LoadAuthorization, LoadRequest, bcd_now


class KeyFileLoadHost:
    """Authorises loads with master keys held in memory; counts its own term_seq."""

    def __init__(self, keys: IssuerKeys, clock: Callable[[], datetime], term_seq_start: int = 0) -> None:
        self._keys = keys
        self._clock = clock
        self._term_seq = term_seq_start
        self._lock = threading.Lock()
        self.confirmed: list[BatchRecord] = []

    def _session_key(self, request: LoadRequest) -> bytes:
        if request.alg != self._keys.alg:
            raise HostRefused("the card's algorithm is not this issuer's")
        dlk = self._keys.card_key(KeyUsage.DLK, request.card_no)
        return crypto.load_session_key(request.alg, dlk, request.rand, request.online_seq)

    def authorize(self, request: LoadRequest) -> LoadAuthorization:
        """Verify MAC1 and answer MAC2 (raise :class:`HostRefused` on a bad MAC1)."""
        sk = self._session_key(request)
        try:
            crypto.verify_load_mac1(
                request.alg, sk, request.old_balance, request.amount, request.term_id, request.mac1
            )
        except crypto.MacError:
            raise HostRefused("MAC1 does not verify: not a genuine card") from None
        date4, time3 = bcd_now(self._clock())
        mac2 = crypto.load_mac2(request.alg, sk, request.amount, request.term_id, date4, time3)
        with self._lock:
            self._term_seq += 1
            term_seq = self._term_seq
        return LoadAuthorization(request.request_id, mac2, date4, time3, term_seq)

    def confirm(self, request: LoadRequest, auth: LoadAuthorization, record: BatchRecord) -> None:
        """Check the TAC of a completed load and keep the record."""
        if record.status is not RecordStatus.UNCONFIRMED:
            dtk = self._keys.card_key(KeyUsage.DTK, request.card_no)
            expected = crypto.load_tac(
                request.alg,
                dtk,
                request.old_balance + request.amount,
                request.online_seq,
                request.amount,
                request.term_id,
                auth.date4,
                auth.time3,
            )
            if expected.hex().upper() != record.tac:
                raise HostRefused("the card's load TAC does not verify")
        self.confirmed.append(record)
