"""Clearing's migrations go down and up again on both databases, keeping the verdicts and their guards."""

from __future__ import annotations

from datetime import date

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from backoffice.schema import alembic_config, upgrade

DAY = date(2025, 3, 3)
RECORD = text(
    "INSERT INTO clearing_record (id, ingest_id, line_no, operator_id, role, txn_type, family, card_no, card_type, "
    "card_seq, amount, balance_before, term_id, term_seq, txn_date, txn_time, txn_epoch, tac, alg, key_ver, status, "
    "line_id, station_id, vehicle_id, ref, device_seq, tac_check, digest) VALUES (:id, 1, 2, 'OP', 'primary', '06', "
    "1, '0310000000000001', '01', :id, 100, 1000, '031000000101', :id, '20250303', '080000', 0, '00000000', '00', "
    "'01', 'ok', '', '', '', '', 1, 'ok', 'x')"
)


def test_clearing_0003_goes_down_and_up_again(db_url: str) -> None:
    upgrade(db_url)
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO clearing_day (day, status, runs) VALUES (:d, 'open', 0)"), {"d": DAY})
            connection.execute(RECORD, [{"id": 7}, {"id": 8}])
            connection.execute(
                text(
                    "INSERT INTO clearing_verdict (record_id, verdict_no, clearing_day, operator_id, class, code, "
                    "late, amount) VALUES (7, 1, :d, 'OP', 'rejected', 'bad_tac', false, 0)"
                ),
                {"d": DAY},
            )
        command.downgrade(alembic_config(db_url), "clearing_0002")
        command.upgrade(alembic_config(db_url), "heads")
        with engine.begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM clearing_verdict")).scalar_one() == 1
        with pytest.raises(DBAPIError), engine.begin() as connection:  # still append-only after the rebuild
            connection.execute(text("DELETE FROM clearing_verdict"))
        with engine.begin() as connection:
            connection.execute(text("UPDATE clearing_day SET status = 'closed' WHERE day = :d"), {"d": DAY})
        with pytest.raises(DBAPIError, match="closed"), engine.begin() as connection:  # and no verdict on a closed day
            connection.execute(
                text(
                    "INSERT INTO clearing_verdict (record_id, verdict_no, clearing_day, operator_id, class, code, "
                    "late, amount) VALUES (8, 1, :d, 'OP', 'rejected', 'bad_tac', false, 0)"
                ),
                {"d": DAY},
            )
    finally:
        engine.dispose()
