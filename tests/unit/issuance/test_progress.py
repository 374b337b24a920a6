"""The batch personalisation progress bar."""

from __future__ import annotations

import io

from rich.console import Console

from issuance.progress import progress_bar


def test_progress_bar_counts_to_the_total() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    with progress_bar(3, "personalising", console=console) as advance:
        for done in range(1, 4):
            advance(done, 3, f"031000000000000{done}")
    text = out.getvalue()
    assert "personalising" in text and "3/3" in text
