"""The project's copies of the shared spec and vectors are the shared ones, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO / ".." / "shared" / "spec"


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not there (no shared spec checkout)")
    return path


def test_vectors_copy_equals_shared() -> None:
    shared = _shared("vectors.json")
    ours = REPO / "tests" / "vectors" / "vectors.json"
    assert ours.read_bytes() == shared.read_bytes()
    assert json.loads(ours.read_text(encoding="utf-8")) == json.loads(shared.read_text(encoding="utf-8"))


def test_spec_copy_equals_shared() -> None:
    shared = _shared("card-protocol.md")
    assert (REPO / "docs" / "card-protocol.md").read_bytes() == shared.read_bytes()
