"""The clearing day's settlement and exception report (cli.md ``onecard clearing report``; issue #6 "Reports").

:func:`build_report` reads the day as of its end — the verdicts given on it, the pending records as they stood,
each operator's statement, the late records, the volume by hour, the ledger through the day, and the
reconciliation of the run that closed it (or of the latest run while it is open). A closed day's verdicts and
entries never change and later days cannot reach back, so a closed day's report is the same document whenever it
is made; its SHA-256 was stored when the day closed and :func:`day_report` checks it.

Renderers: JSON (the document), CSV (one section after another), XLSX and PDF (with a chart of the day's volume by
hour and operator). All are deterministic: sorted rows, fixed metadata and dates, no timestamps of the making.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from backoffice.errors import NotFound, OnecardError
from clearing import bulk, ledger
from clearing.tables import ClearingDay, ClearingRun

CLASSES = ("settled", "pending", "rejected", "suspicious", "duplicate", "conflict")
EXCEPTION_CLASSES = ("rejected", "suspicious", "conflict", "pending")
RECORD_FIELDS = "r.card_no, r.card_seq, r.term_id, r.term_seq, r.txn_type, r.amount, r.txn_date, r.txn_time"


class ReportTampered(OnecardError):
    """A closed day's report no longer matches the SHA-256 stored when it closed (500)."""

    code = "report_changed"
    http_status = 500


def _latest_on(day_column: str) -> str:
    return (
        "NOT EXISTS (SELECT 1 FROM clearing_verdict w WHERE w.record_id = v.record_id "
        f"AND w.clearing_day {day_column} AND w.verdict_no > v.verdict_no)"
    )


def _record_json(row: Sequence[Any]) -> dict[str, Any]:
    card_no, card_seq, term_id, term_seq, txn_type, amount, txn_date, txn_time = row[:8]
    return {
        "card_no": str(card_no),
        "card_seq": int(card_seq),
        "term_id": str(term_id),
        "term_seq": int(term_seq),
        "txn_type": str(txn_type),
        "amount": int(amount),
        "txn_date": str(txn_date),
        "txn_time": str(txn_time),
    }


def _record_key(item: dict[str, Any]) -> tuple[Any, ...]:
    return (
        item.get("class", ""),
        item.get("code", ""),
        item["card_no"],
        item["card_seq"],
        item["term_id"],
        item["term_seq"],
        item["txn_date"],
        item["txn_time"],
    )


def build_report(session: Session, day: date, *, closing_run: int | None = None) -> dict[str, Any]:
    """The report of clearing ``day`` (cli.md shape, plus pending, late, volume by hour and the ledger)."""
    stored = session.get(ClearingDay, day)
    if stored is None:
        raise NotFound(f"clearing day {day.isoformat()} has not been run")
    params = {"day": day}
    counts = dict.fromkeys(CLASSES, 0)
    for klass, count in bulk.fetch_rows(
        session,
        f"SELECT v.class, count(*) FROM clearing_verdict v WHERE v.clearing_day = :day AND {_latest_on('= :day')} "
        "GROUP BY v.class",
        params,
    ):
        counts[str(klass)] = int(count)
    counts["duplicate"] = int(
        session.execute(text("SELECT count(*) FROM clearing_duplicate WHERE clearing_day = :day"), params).scalar_one()
    )
    exceptions = [
        {"class": str(klass), "code": str(code), "operator_id": str(operator), "late": bool(late), **_record_json(rest)}
        for klass, code, operator, late, *rest in bulk.fetch_rows(
            session,
            f"SELECT v.class, v.code, v.operator_id, v.late, {RECORD_FIELDS} FROM clearing_verdict v "
            "JOIN clearing_record r ON r.id = v.record_id WHERE v.clearing_day = :day "
            f"AND v.class IN ('rejected', 'suspicious', 'conflict', 'pending') AND {_latest_on('= :day')}",
            params,
        )
    ]
    pending = [
        {"since": str(since), "operator_id": str(operator), **_record_json(rest)}
        for since, operator, *rest in bulk.fetch_rows(
            session,
            f"SELECT v.clearing_day, v.operator_id, {RECORD_FIELDS} FROM clearing_verdict v "
            "JOIN clearing_record r ON r.id = v.record_id WHERE v.class = 'pending' AND v.clearing_day <= :day "
            f"AND {_latest_on('<= :day')} AND NOT EXISTS (SELECT 1 FROM clearing_record c "
            "JOIN clearing_verdict cv ON cv.record_id = c.id WHERE c.term_id = r.term_id AND c.term_seq = r.term_seq "
            "AND c.id <> r.id AND c.role = 'primary' AND cv.clearing_day <= :day)",
            params,
        )
    ]
    late = [
        {"operator_id": str(operator), "class": str(klass), **_record_json(rest)}
        for operator, klass, *rest in bulk.fetch_rows(
            session,
            f"SELECT v.operator_id, v.class, {RECORD_FIELDS} FROM clearing_verdict v "
            "JOIN clearing_record r ON r.id = v.record_id WHERE v.clearing_day = :day AND v.late "
            "AND v.posting IN ('float', 'suspense')",
            params,
        )
    ]
    volume = [
        {"operator_id": str(operator), "hour": int(hour), "count": int(count), "amount": int(amount)}
        for operator, hour, count, amount in bulk.fetch_rows(
            session,
            "SELECT v.operator_id, CAST(substr(r.txn_time, 1, 2) AS INTEGER), count(*), sum(v.amount) "
            "FROM clearing_verdict v JOIN clearing_record r ON r.id = v.record_id WHERE v.clearing_day = :day "
            "AND v.posting IN ('float', 'suspense') GROUP BY v.operator_id, CAST(substr(r.txn_time, 1, 2) AS INTEGER)",
            params,
        )
    ]
    operators = [
        {
            "operator_id": str(operator),
            "name": str(name or operator),
            "count": int(count),
            "amount": int(amount),
            "fee": int(fee),
            "payable": int(payable),
        }
        for operator, name, count, amount, fee, payable in bulk.fetch_rows(
            session,
            "SELECT s.operator_id, o.name, s.record_count, s.amount, s.fee, s.payable FROM clearing_statement s "
            "LEFT JOIN operator o ON o.operator_id = s.operator_id WHERE s.clearing_day = :day",
            params,
        )
    ]
    balances = ledger.balances(session, through=day)
    run_id = closing_run if closing_run is not None else stored.closed_run_id
    if run_id is None:
        latest = bulk.fetch_rows(
            session, "SELECT max(id) FROM clearing_run WHERE clearing_day = :day AND result IS NOT NULL", params
        )
        run_id = latest[0][0] if latest and latest[0][0] is not None else None
    reconciliation: dict[str, Any] = {"ok": False, "checks": []}
    if run_id is not None:
        run = session.get(ClearingRun, int(run_id))
        if run is not None and run.result:
            result = json.loads(run.result)
            reconciliation = {"ok": bool(result["ok"]), "checks": result["checks"]}
    closed = closing_run is not None or stored.status == "closed"
    return {
        "date": day.isoformat(),
        "status": "closed" if closed else "open",
        "operators": sorted(operators, key=lambda item: item["operator_id"]),
        "records": counts,
        "exceptions": sorted(exceptions, key=_record_key),
        "pending": sorted(pending, key=_record_key),
        "late": sorted(late, key=_record_key),
        "volume_by_hour": sorted(volume, key=lambda item: (item["operator_id"], item["hour"])),
        "ledger": [{"account": account, "balance": amount} for account, amount in sorted(balances.items())],
        "reconciliation": reconciliation,
    }


def day_report(session: Session, day: date) -> dict[str, Any]:
    """The report of ``day``; for a closed day, checked against the SHA-256 stored when it closed."""
    document = build_report(session, day)
    stored = session.get(ClearingDay, day)
    closed = stored is not None and stored.status == "closed" and stored.report_sha256
    if closed and stored is not None and hashlib.sha256(render_json(document)).hexdigest() != stored.report_sha256:
        raise ReportTampered(f"the report of closed day {day.isoformat()} differs from the one it closed with")
    return document


# --- renderers ----------------------------------------------------------------------------------------------------


def render_json(document: dict[str, Any]) -> bytes:
    """The document as JSON: sorted keys, two-space indent, UTF-8, a final newline."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _sections(document: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    record_columns = ["card_no", "card_seq", "term_id", "term_seq", "txn_type", "amount", "txn_date", "txn_time"]
    return [
        (
            "statement",
            ["operator_id", "name", "count", "amount", "fee", "payable"],
            [
                [o[k] for k in ("operator_id", "name", "count", "amount", "fee", "payable")]
                for o in document["operators"]
            ],
        ),
        ("records", ["class", "count"], [[k, document["records"][k]] for k in CLASSES]),
        (
            "exceptions",
            ["class", "code", "operator_id", "late", *record_columns],
            [
                [e["class"], e["code"], e["operator_id"], e["late"], *(e[k] for k in record_columns)]
                for e in document["exceptions"]
            ],
        ),
        (
            "pending",
            ["since", "operator_id", *record_columns],
            [[p["since"], p["operator_id"], *(p[k] for k in record_columns)] for p in document["pending"]],
        ),
        (
            "late",
            ["class", "operator_id", *record_columns],
            [[x["class"], x["operator_id"], *(x[k] for k in record_columns)] for x in document["late"]],
        ),
        (
            "volume_by_hour",
            ["operator_id", "hour", "count", "amount"],
            [[v["operator_id"], v["hour"], v["count"], v["amount"]] for v in document["volume_by_hour"]],
        ),
        ("ledger", ["account", "balance"], [[a["account"], a["balance"]] for a in document["ledger"]]),
        (
            "reconciliation",
            ["name", "ok", "expected", "actual", "detail"],
            [
                [c["name"], c["ok"], c["expected"], c["actual"], c.get("detail", "")]
                for c in document["reconciliation"]["checks"]
            ],
        ),
    ]


def render_csv(document: dict[str, Any]) -> bytes:
    """CSV: a title row, then one section after another (a header row each), separated by empty rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["report", "date", document["date"], "status", document["status"]])
    for name, header, rows in _sections(document):
        writer.writerow([])
        writer.writerow(["section", *header])
        for row in rows:
            writer.writerow([name, *row])
    return out.getvalue().encode("utf-8")


FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def render_xlsx(document: dict[str, Any]) -> bytes:
    """XLSX: one sheet per section; fixed document dates and zip entry times (the same bytes every time)."""
    from openpyxl import Workbook

    workbook = Workbook()
    first = True
    for name, header, rows in _sections(document):
        sheet = workbook.active if first else workbook.create_sheet()
        first = False
        sheet.title = name[:31]
        sheet.append(header)
        for row in rows:
            sheet.append(list(row))
    made = datetime.combine(date.fromisoformat(document["date"]), time(0))
    workbook.properties.creator = "onecard clearing"
    workbook.properties.title = f"Clearing report {document['date']}"
    workbook.properties.created = made
    workbook.properties.modified = made
    raw = io.BytesIO()
    workbook.save(raw)
    return _normalised_zip(raw.getvalue(), made)


def _normalised_zip(data: bytes, made: datetime) -> bytes:
    """The same archive with every entry's time fixed and the document modified when it was made (openpyxl stamps
    the time of saving in both)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    stamp = made.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)", rb"\g<1>" + stamp + rb"\g<2>", content
                )
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o600 << 16
            target.writestr(fixed, content)
    return out.getvalue()


def render_pdf(document: dict[str, Any]) -> bytes:
    """PDF: the statement, record counts, reconciliation, exceptions, and a stacked bar chart of the day's volume
    by hour and operator; reportlab's invariant mode (no creation date, fixed ids)."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.charts.legends import Legend
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    out = io.BytesIO()
    pdf = SimpleDocTemplate(
        out,
        pagesize=A4,
        invariant=1,
        title=f"Clearing report {document['date']}",
        author="onecard clearing",
        creator="onecard clearing",
        leftMargin=15 * mm,
        rightMargin=15 * mm,
    )
    grid = TableStyle(
        [
            ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
        ]
    )

    def table_of(header: list[str], rows: list[list[Any]]) -> Table:
        shown = [[str(cell) for cell in row] for row in rows[:200]]
        made = Table([header, *shown], repeatRows=1)
        made.setStyle(grid)
        return made

    story: list[Any] = [
        Paragraph(f"Clearing report {document['date']} ({document['status']})", styles["Title"]),
        Paragraph("Volume by hour and operator (fen)", styles["Heading2"]),
        _volume_chart(document, Drawing, VerticalBarChart, Legend, String, colors),
    ]
    sections = {name: (header, rows) for name, header, rows in _sections(document)}
    titles = {
        "statement": "Settlement per operator (fen)",
        "records": "Records by class",
        "reconciliation": "Reconciliation",
        "exceptions": "Exceptions",
        "pending": "Pending",
        "late": "Late records",
    }
    for name, title in titles.items():
        header, rows = sections[name]
        story += [Spacer(1, 4 * mm), Paragraph(title, styles["Heading2"])]
        story.append(table_of(header, rows) if rows else Paragraph("none", styles["Normal"]))
        if len(rows) > 200:
            story.append(
                Paragraph(f"… and {len(rows) - 200} more (see the JSON, CSV or XLSX report)", styles["Normal"])
            )
    pdf.build(story)
    return out.getvalue()


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _volume_chart(document: dict[str, Any], drawing: Any, bar_chart: Any, legend: Any, string: Any, colors: Any) -> Any:
    operators = sorted({v["operator_id"] for v in document["volume_by_hour"]})
    series = []
    for operator in operators:
        by_hour = {v["hour"]: v["amount"] for v in document["volume_by_hour"] if v["operator_id"] == operator}
        series.append([by_hour.get(hour, 0) for hour in range(24)])
    canvas = drawing(500, 230)
    if not series:
        canvas.add(string(200, 110, "no volume", fontName="Helvetica", fontSize=10))
        return canvas
    chart = bar_chart()
    chart.x, chart.y, chart.width, chart.height = 45, 40, 420, 160
    chart.data = series
    chart.categoryAxis.categoryNames = [f"{hour:02d}" for hour in range(24)]
    chart.categoryAxis.labels.fontSize = 6
    chart.categoryAxis.style = "stacked"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 6
    for index in range(len(series)):
        chart.bars[index].fillColor = colors.HexColor(PALETTE[index % len(PALETTE)])
        chart.bars[index].strokeWidth = 0
    canvas.add(chart)
    key = legend()
    key.x, key.y = 45, 20
    key.fontSize = 6
    key.columnMaximum = 1
    key.deltax = 70
    key.alignment = "right"
    key.colorNamePairs = [
        (colors.HexColor(PALETTE[index % len(PALETTE)]), operator) for index, operator in enumerate(operators)
    ]
    canvas.add(key)
    return canvas


RENDERERS = {"json": render_json, "csv": render_csv, "xlsx": render_xlsx, "pdf": render_pdf}
