"""Fixtures for the card OS tests: scripted random source, factory and personalised cards for both suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cardkit import ALG_IDS, ALGS, Harness, ScriptedRng, personalised

from cardos.crypto import Alg


def _need_card() -> None:
    pytest.importorskip("cardos.card", reason="cardos/card.py is not there yet")


@pytest.fixture(params=ALGS, ids=ALG_IDS)
def alg(request: pytest.FixtureRequest) -> Alg:
    """Each algorithm suite in turn."""
    return Alg(request.param)


@pytest.fixture
def rng() -> ScriptedRng:
    """A scripted random source (queued bytes, then a seeded stream)."""
    return ScriptedRng(1234)


@pytest.fixture
def factory_user(alg: Alg, rng: ScriptedRng) -> Harness:
    """A factory-state user card (powered on, MF current)."""
    _need_card()
    return Harness.factory("user", alg, rng)


@pytest.fixture
def factory_psam(alg: Alg) -> Harness:
    """A factory-state PSAM."""
    _need_card()
    return Harness.factory("psam", alg, ScriptedRng(4321))


@pytest.fixture
def user(alg: Alg, rng: ScriptedRng) -> Iterator[Harness]:
    """An issued user card personalised by replaying the vector exchange, purse application selected."""
    _need_card()
    hn = personalised("user", alg, rng)
    r = hn.select_purse()
    assert r.sw == 0x9000
    yield hn


@pytest.fixture
def psam(alg: Alg) -> Harness:
    """An issued PSAM personalised by replaying the vector exchange, its application selected."""
    _need_card()
    ps = personalised("psam", alg, ScriptedRng(4321))
    assert ps.select_psam().sw == 0x9000
    return ps


@pytest.fixture
def funded(user: Harness) -> Harness:
    """The issued user card with 10000 fen loaded (online_seq 1 afterwards)."""
    user.load(10_000, rand=b"\x5a\x5a\x5a\x5a")
    return user
