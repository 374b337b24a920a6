"""The issuance feed and the reconciliation of a clearing day (issue #6 "Reconciliation after every run").

Issuance moves purse money as it happens (``purse_movements``: loads from the counter's cash or from a closed
card's settlement, a closed card's balance into its settlement, a refund paid out). :func:`import_feed` takes the
movements made before the end of the clearing day into the ledger once, as one entry per run (``from`` debited,
``to`` credited, issuance accounts mapped to ledger accounts). Clearing's own movements (settled purchases,
``cleared_purchases``) are not imported: clearing posted them itself.

:func:`reconcile` then checks, each from two independent sources, and says exactly which numbers disagree:

- ``ledger_balanced``: all debits = all credits;
- ``card_shadows_equal_float``: the sum of issuance's card shadow balances = the float account, plus issuance
  movements not yet imported (normally none);
- ``float_movement``: loads − purchases − refunds + reversals = the day's change in the float;
- ``operator_payable:<op>``: the operator's cleared total − the day's fee = what its payable account received;
- ``clearing_drained:<op>``: the operator's clearing account is empty after settlement;
- ``suspense_open_items``: the suspense account = purchases posted to suspense − their reversals − write-offs;
- ``every_record_decided``: every record the run took in has a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from clearing import bulk, ledger
from clearing.clear import RunRef, db_timestamp, fee_schedule
from clearing.rules import (
    BALANCE_SETTLEMENTS,
    DEPOSITS,
    FLOAT,
    SUSPENSE,
    Policy,
    clearing_account,
    day_fee,
    entry,
    payable_account,
)

CLEARED_PURCHASES = "cleared_purchases"
FEED_ID_WINDOW = 1_000_000
"""Movements are looked for above the highest imported id minus this (ids of concurrent commits interleave)."""


def day_end(day: date, policy: Policy) -> datetime:
    """The end of a clearing day (midnight after it, at the clearing's UTC offset), in UTC."""
    zone = timezone(timedelta(seconds=policy.utc_offset))
    return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)


def ledger_account_of(issuance_account: str) -> str:
    """The ledger account an issuance account belongs to (``card:*`` → float, ``settlement:*`` → balance
    settlements, ``counter_cash`` → deposits; anything unknown → suspense, where reconciliation sees it)."""
    if issuance_account.startswith("card:"):
        return FLOAT
    if issuance_account.startswith("settlement:"):
        return BALANCE_SETTLEMENTS
    if issuance_account == "counter_cash":
        return DEPOSITS
    return SUSPENSE


@dataclass(frozen=True, slots=True)
class FeedTotals:
    """What one import took in."""

    movements: int
    loads: int
    refunds: int


def _window_floor(session: Session) -> int:
    highest = session.execute(text("SELECT coalesce(max(movement_id), 0) FROM clearing_feed_import")).scalar_one()
    return max(0, int(highest) - FEED_ID_WINDOW)


def import_feed(session: Session, run: RunRef, policy: Policy) -> FeedTotals:
    """Take issuance's purse movements made before the end of the run's day into the ledger, once."""
    cutoff = db_timestamp(session, day_end(run.day, policy))
    rows = bulk.fetch_rows(
        session,
        "SELECT m.id, m.from_account, m.to_account, m.amount FROM purse_movements m WHERE m.id > :floor "
        "AND m.at < :cutoff AND m.to_account <> :cleared AND m.from_account <> :cleared "
        "AND NOT EXISTS (SELECT 1 FROM clearing_feed_import f WHERE f.movement_id = m.id) ORDER BY m.id",
        {"floor": _window_floor(session), "cutoff": cutoff, "cleared": CLEARED_PURCHASES},
    )
    if not rows:
        return FeedTotals(0, 0, 0)
    entry_ref = f"{run.day.isoformat()}/feed/-/r{run.run_no}"
    movements: dict[str, int] = {}
    loads = refunds = 0
    for _id, source, target, amount in rows:
        debit, credit = ledger_account_of(str(source)), ledger_account_of(str(target))
        movements[debit] = movements.get(debit, 0) + int(amount)
        movements[credit] = movements.get(credit, 0) - int(amount)
        if credit == FLOAT and debit != FLOAT:
            loads += int(amount)
        elif debit == FLOAT and credit != FLOAT:
            refunds += int(amount)
    posted = entry(entry_ref, run.day, "feed", None, f"issuance movements up to {run.day.isoformat()}", movements)
    if posted is not None:
        ledger.post(session, posted)
    bulk.insert_rows(
        session,
        "clearing_feed_import",
        ("movement_id", "clearing_day", "entry_ref"),
        [(int(row[0]), run.day, entry_ref) for row in rows],
    )
    return FeedTotals(len(rows), loads, refunds)


@dataclass(frozen=True, slots=True)
class Check:
    """One reconciliation identity: the two numbers and whether they agree."""

    name: str
    expected: int
    actual: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        """The numbers agree."""
        return self.expected == self.actual

    def to_json(self) -> dict[str, Any]:
        """``{"name", "ok", "expected", "actual", "detail"}`` (cli.md report shape)."""
        return {
            "name": self.name,
            "ok": self.ok,
            "expected": self.expected,
            "actual": self.actual,
            "detail": self.detail,
        }


def _one(session: Session, sql: str, params: dict[str, Any] | None = None) -> int:
    return int(session.execute(text(sql), params or {}).scalar_one() or 0)


def _float_day(session: Session, day: date) -> Check:
    feed = bulk.fetch_rows(
        session,
        "SELECT m.from_account, m.to_account, m.amount FROM purse_movements m JOIN clearing_feed_import f "
        "ON f.movement_id = m.id WHERE f.clearing_day = :day",
        {"day": day},
    )
    loads = sum(int(a) for s, t, a in feed if ledger_account_of(t) == FLOAT and ledger_account_of(s) != FLOAT)
    refunds = sum(int(a) for s, t, a in feed if ledger_account_of(s) == FLOAT and ledger_account_of(t) != FLOAT)
    purchases = _one(
        session,
        "SELECT coalesce(sum(amount), 0) FROM clearing_verdict WHERE clearing_day = :day AND posting = 'float'",
        {"day": day},
    )
    reversals = -_one(
        session,
        "SELECT coalesce(sum(amount), 0) FROM clearing_verdict WHERE clearing_day = :day AND posting = 'reverse' "
        "AND posted_from = 'float'",
        {"day": day},
    )
    change = -ledger.balance(session, FLOAT, on=day)
    detail = f"loads {loads} − purchases {purchases} − refunds {refunds} + reversals {reversals}"
    return Check("float_movement", loads - purchases - refunds + reversals, change, detail)


def _shadows(session: Session) -> Check:
    shadows, in_transit = session.execute(
        text(
            "SELECT (SELECT coalesce(sum(shadow_balance), 0) FROM cards), "
            "(SELECT coalesce(sum(CASE WHEN m.to_account LIKE 'card:%' THEN m.amount ELSE 0 END) "
            "- sum(CASE WHEN m.from_account LIKE 'card:%' THEN m.amount ELSE 0 END), 0) FROM purse_movements m "
            "WHERE m.id > :floor AND m.to_account <> :cleared AND m.from_account <> :cleared "
            "AND NOT EXISTS (SELECT 1 FROM clearing_feed_import f WHERE f.movement_id = m.id))"
        ),
        {"floor": _window_floor(session), "cleared": CLEARED_PURCHASES},
    ).one()
    float_balance = -ledger.balance(session, FLOAT)
    detail = f"float {float_balance} + issuance movements not yet taken in {int(in_transit)}"
    return Check("card_shadows_equal_float", float_balance + int(in_transit), int(shadows), detail)


def _operators(session: Session, day: date) -> list[Check]:
    checks: list[Check] = []
    rows = bulk.fetch_rows(
        session,
        "SELECT operator_id, coalesce(sum(amount), 0), "
        "coalesce(sum(CASE WHEN amount = 0 THEN 0 WHEN posting = 'reverse' THEN -1 ELSE 1 END), 0) "
        "FROM clearing_verdict WHERE clearing_day = :day AND posting IS NOT NULL GROUP BY operator_id",
        {"day": day},
    )
    for operator_id, cleared, paid in sorted(rows):
        fee = day_fee(fee_schedule(session, operator_id, day), int(cleared), int(paid))
        received = -ledger.balance(session, payable_account(operator_id), on=day)
        checks.append(
            Check(
                f"operator_payable:{operator_id}",
                int(cleared) - fee,
                received,
                f"cleared {int(cleared)} − fee {fee}",
            )
        )
    for (account,) in sorted(
        bulk.fetch_rows(session, "SELECT account FROM ledger_account WHERE kind = 'clearing' ORDER BY account")
    ):
        operator_id = str(account).split(":", 1)[1]
        checks.append(
            Check(f"clearing_drained:{operator_id}", 0, ledger.balance(session, clearing_account(operator_id)))
        )
    return checks


def _suspense(session: Session) -> Check:
    posted = _one(session, "SELECT coalesce(sum(amount), 0) FROM clearing_verdict WHERE posting = 'suspense'")
    reversed_ = -_one(
        session,
        "SELECT coalesce(sum(amount), 0) FROM clearing_verdict WHERE posting = 'reverse' AND posted_from = 'suspense'",
    )
    written_off = _one(
        session,
        "SELECT coalesce(sum(amount), 0) FROM clearing_exception_action WHERE status = 'approved' "
        "AND action = 'accept' AND applied_day IS NOT NULL AND amount IS NOT NULL",
    )
    detail = f"posted {posted} − reversed {reversed_} − written off {written_off}"
    return Check("suspense_open_items", posted - reversed_ - written_off, ledger.balance(session, SUSPENSE), detail)


def _undecided(session: Session, run: RunRef, policy: Policy) -> Check:
    left = _one(
        session,
        "SELECT count(*) FROM batch_ingest b JOIN clearing_record r "
        "ON r.id BETWEEN b.first_record_id AND b.last_record_id WHERE b.claim_run_id IS NOT NULL "
        "AND b.claim_run_id <= :run AND b.open_records > 0 AND r.role IN ('primary', 'conflict') "
        "AND (r.txn_date <= :day OR r.txn_epoch > b.created_epoch + :skew) "
        "AND NOT EXISTS (SELECT 1 FROM clearing_verdict v WHERE v.record_id = r.id)",
        {"run": run.run_id, "day": run.day.strftime("%Y%m%d"), "skew": policy.future_skew},
    )
    return Check("every_record_decided", 0, left, "records taken in without a class")


def reconcile(session: Session, run: RunRef, policy: Policy) -> list[Check]:
    """Every reconciliation identity after a run (issue #6); none may fail for the day to close."""
    debits, credits = ledger.totals(session)
    checks = [
        Check("ledger_balanced", debits, credits, "all debits against all credits"),
        _shadows(session),
        _float_day(session, run.day),
        *_operators(session, run.day),
        _suspense(session),
        _undecided(session, run, policy),
    ]
    return checks


def failed(checks: Sequence[Check]) -> list[Check]:
    """The checks whose numbers disagree."""
    return [check for check in checks if not check.ok]
