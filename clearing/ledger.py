"""The double-entry ledger in SQL (issue #6 "Ledger and settlement").

Accounts (``ledger_account``): ``float`` (card liability), ``deposits`` (the money backing it), ``fee_income``,
``suspense``, ``balance_settlements`` (closed cards' balances on their way out), ``write_offs``, and per operator
``clearing:<op>`` (cleared purchases awaiting settlement; drains every run) and ``payable:<op>``.

An entry (:class:`clearing.rules.Entry`) is written as its lines, then its ``ledger_entry`` row; the database
refuses the entry unless its lines balance, refuses lines added later, refuses any update or delete, refuses
entries into a closed day, and refuses to commit lines without their entry (deferred foreign key). So every
posting balances whatever the code does. Entry references are deterministic (``<day>/<kind>/<operator>/r<run>``):
the same run posts the same entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from clearing import bulk
from clearing.rules import (
    BALANCE_SETTLEMENTS,
    DEPOSITS,
    FEE_INCOME,
    FLOAT,
    SUSPENSE,
    WRITE_OFFS,
    Entry,
    clearing_account,
    payable_account,
)
from clearing.tables import LedgerAccount

FIXED_ACCOUNTS = {
    FLOAT: ("liability", "Card liability (the float)"),
    DEPOSITS: ("asset", "Deposits backing the float"),
    FEE_INCOME: ("income", "Clearing fees"),
    SUSPENSE: ("suspense", "Suspense: purchases no card balance covers"),
    BALANCE_SETTLEMENTS: ("liability", "Balances of closed cards, to transfer or pay out"),
    WRITE_OFFS: ("expense", "Written off"),
}


def ensure_accounts(session: Session, operator_ids: Iterable[str] = ()) -> None:
    """Create the fixed accounts and each operator's clearing and payable accounts when missing."""
    rows = [
        {"account": account, "kind": kind, "operator_id": None, "name": name}
        for account, (kind, name) in FIXED_ACCOUNTS.items()
    ]
    for operator_id in sorted(set(operator_ids)):
        rows.append(
            {
                "account": clearing_account(operator_id),
                "kind": "clearing",
                "operator_id": operator_id,
                "name": f"Cleared for {operator_id}, awaiting settlement",
            }
        )
        rows.append(
            {
                "account": payable_account(operator_id),
                "kind": "liability",
                "operator_id": operator_id,
                "name": f"Payable to {operator_id}",
            }
        )
    insert = postgresql.insert if bulk.is_postgres(session) else sqlite.insert
    session.execute(insert(LedgerAccount).values(rows).on_conflict_do_nothing())


def post(session: Session, entry: Entry) -> None:
    """Write ``entry``: its lines, then the entry row the database checks them against (does not commit)."""
    session.execute(
        text(
            "INSERT INTO ledger_line (entry_ref, line_no, account, debit, credit) "
            "VALUES (:entry_ref, :line_no, :account, :debit, :credit)"
        ),
        [
            {"entry_ref": entry.entry_ref, "line_no": number, "account": line.account, "debit": line.debit,
             "credit": line.credit}
            for number, line in enumerate(entry.lines, start=1)
        ],
    )  # fmt: skip
    session.execute(
        text(
            "INSERT INTO ledger_entry (entry_ref, clearing_day, kind, operator_id, line_count, total, memo) "
            "VALUES (:entry_ref, :day, :kind, :operator_id, :line_count, :total, :memo)"
        ),
        {
            "entry_ref": entry.entry_ref,
            "day": entry.clearing_day,
            "kind": entry.kind,
            "operator_id": entry.operator_id,
            "line_count": len(entry.lines),
            "total": entry.total,
            "memo": entry.memo[:200],
        },
    )


def entry_exists(session: Session, entry_ref: str) -> bool:
    """Whether an entry with this reference is posted."""
    return (
        session.execute(text("SELECT 1 FROM ledger_entry WHERE entry_ref = :r"), {"r": entry_ref}).first() is not None
    )


def balance(session: Session, account: str, *, through: date | None = None, on: date | None = None) -> int:
    """Debits minus credits of ``account`` (all days, days up to ``through``, or the one day ``on``)."""
    sql = (
        "SELECT coalesce(sum(l.debit - l.credit), 0) FROM ledger_line l JOIN ledger_entry e "
        "ON e.entry_ref = l.entry_ref WHERE l.account = :account"
    )
    params: dict[str, object] = {"account": account}
    if through is not None:
        sql += " AND e.clearing_day <= :through"
        params["through"] = through
    if on is not None:
        sql += " AND e.clearing_day = :on"
        params["on"] = on
    return int(session.execute(text(sql), params).scalar_one())


def balances(session: Session, *, through: date | None = None) -> dict[str, int]:
    """Debits minus credits of every account with a line (up to ``through``), by account."""
    sql = (
        "SELECT l.account, sum(l.debit - l.credit) FROM ledger_line l JOIN ledger_entry e ON e.entry_ref = l.entry_ref"
    )
    params: dict[str, object] = {}
    if through is not None:
        sql += " WHERE e.clearing_day <= :through"
        params["through"] = through
    sql += " GROUP BY l.account"
    return {str(account): int(amount) for account, amount in bulk.fetch_rows(session, sql, params)}


def totals(session: Session) -> tuple[int, int]:
    """All debits and all credits ever posted (equal: the database allows nothing else)."""
    debits, credits = session.execute(
        text("SELECT coalesce(sum(debit), 0), coalesce(sum(credit), 0) FROM ledger_line")
    ).one()
    return int(debits), int(credits)
