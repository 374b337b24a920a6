"""The web pages' pure parts: labels in both languages (every key a template uses has both), language choice,
the SVG bar chart, money and date formatting."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from api.web import charts, i18n, pages
from backoffice.errors import InvalidInput

TEMPLATES = Path(pages.__file__).parent / "templates"
KEY_IN_TEMPLATE = re.compile(r"""\bt\(\s*'([a-z_]+\.[a-z_.]+)'\s*\)""")
KEY_IN_CODE = re.compile(r"""["']((?:[a-z_]+)\.(?:[a-z_]+))["']""")


def _template_keys() -> set[str]:
    keys: set[str] = set()
    for path in TEMPLATES.rglob("*.html"):
        keys |= set(KEY_IN_TEMPLATE.findall(path.read_text(encoding="utf-8")))
    return keys


def test_every_label_a_template_uses_exists_in_both_languages() -> None:
    keys = _template_keys()
    assert len(keys) > 100
    missing = sorted(key for key in keys if key not in i18n.LABELS)
    assert missing == []
    for key, (english, chinese) in i18n.LABELS.items():
        assert english.strip() and chinese.strip(), key


def test_labels_the_pages_module_names_exist() -> None:
    source = Path(pages.__file__).read_text(encoding="utf-8")
    prefixes = {key.split(".")[0] for key in i18n.LABELS}
    named = {key for key in KEY_IN_CODE.findall(source) if key.split(".")[0] in prefixes and not key.endswith(".html")}
    assert {"resident.registered", "load.done", "exc.proposed", "finance.by_hour"} <= named
    assert sorted(key for key in named if key not in i18n.LABELS) == []


def test_chinese_labels_are_chinese() -> None:
    han = re.compile(r"[\u4e00-\u9fff]")
    untranslated = [key for key, (_, zh) in i18n.LABELS.items() if not han.search(zh) and not key.startswith("report.")]
    assert untranslated == ["nav.language", "receipt.tac"]  # the switch names English; TAC is TAC in both


@pytest.mark.parametrize(
    ("cookie", "accept", "expected"),
    [
        (None, None, "en"),
        ("zh", "en-GB", "zh"),
        ("fr", "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        (None, "de-DE, en;q=0.5", "en"),
        (None, "zh_TW", "zh"),
        ("EN", "zh", "en"),
    ],
)
def test_language_negotiation(cookie: str | None, accept: str | None, expected: str) -> None:
    assert i18n.negotiate(cookie, accept) == expected


def test_translator_and_gaps() -> None:
    assert i18n.translator("zh")("nav.counter") == "柜台"
    assert i18n.translator("en")("nav.counter") == "Counter desk"
    assert i18n.label("no.such.key", "zh") == "no.such.key"
    assert i18n.other("en") == "zh" and i18n.other("zh") == "en"


def test_axis_scale() -> None:
    assert charts.axis_scale(0) == (1, 1)
    assert charts.axis_scale(3) == (3, 1)
    assert charts.axis_scale(83) == (100, 50)
    assert charts.axis_scale(123) == (150, 50)
    assert charts.axis_scale(24_000) == (30_000, 10_000)
    assert charts.axis_scale(100) == (100, 50)
    assert charts.axis_scale(0.4) == (0.4, 0.1)


def test_bar_chart_bars_stack_and_labels_are_escaped() -> None:
    svg = charts.bar_chart(
        ["08", "09", "<b>"],
        [charts.Series("OP-A", (10, 0, 5)), charts.Series("O&P", (10, 20, 0))],
        title='Volume "by hour"',
    )
    text = str(svg)
    assert text.startswith("<svg") and text.endswith("</svg>")
    assert "<b>" not in text and "&lt;b&gt;" in text and "O&amp;P" in text
    assert 'aria-label="Volume &#34;by hour&#34;"' in text or "Volume &#34;by hour&#34;" in text
    bars = re.findall(r'<rect x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)" fill="(#[0-9a-f]+)"><title>', text)
    assert len(bars) == 4  # zero values draw nothing
    heights = [float(h) for _, h, _ in bars]
    # 08: 10 + 10 stacked = 20 = 09's single bar, the axis top (20): both full height.
    assert heights[0] + heights[1] == pytest.approx(heights[2])
    assert "OP-A" in text and "O&amp;P" in text  # legend for several series


def test_bar_chart_single_series_has_no_legend_and_checks_lengths() -> None:
    svg = str(charts.bar_chart(["a", "b"], [charts.Series("only", (1, 2))], title="t"))
    assert "only ·" not in svg and ">only<" not in svg
    with pytest.raises(ValueError):
        charts.bar_chart(["a"], [charts.Series("x", (1, 2))], title="t")
    empty = str(charts.bar_chart([], [], title="nothing"))
    assert "<rect" not in empty


def test_money_and_dates() -> None:
    assert pages.format_yuan(123456) == "¥1,234.56"
    assert pages.format_yuan(-5) == "-¥0.05"
    assert pages.format_yuan(None) == "—"
    assert pages.parse_yuan("50") == 5000
    assert pages.parse_yuan("12.5") == 1250
    assert pages.parse_yuan(" ¥1,000.05 ") == 100005
    for bad in ("", "0", "1.234", "-3", "abc", "1e3", "12345678"):
        with pytest.raises(InvalidInput):
            pages.parse_yuan(bad)
    assert pages.format_card_time("20250303", "081502") == "2025-03-03 08:15:02"
    assert pages.format_card_time(None, None) == "—"
    assert pages.parse_day("", date(2025, 1, 2)) == date(2025, 1, 2)
    assert pages.parse_day("2025-03-03", date(2025, 1, 2)) == date(2025, 3, 3)
    with pytest.raises(InvalidInput):
        pages.parse_day("03/03/2025", date(2025, 1, 2))


def test_safe_next_refuses_other_sites() -> None:
    assert pages.safe_next("/web/counter?x=1") == "/web/counter?x=1"
    for bad in ("https://evil.example/", "//evil.example/web/", "/auth/login", "/web\\..", "/web/../auth", None, ""):
        assert pages.safe_next(bad) == "/web/"
