"""simulators.pcscd: finding the vpcd driver configuration, and refusing clearly without it."""

from __future__ import annotations

from pathlib import Path

import pytest

import simulators.pcscd as pcscd_helper
from simulators.pcscd import PcscdError, PcscdUnavailable, ensure_pcscd, find_vpcd_config, vpcd_lock


def test_find_vpcd_config(tmp_path: Path) -> None:
    (tmp_path / "libccidtwin").write_text("#LIBPATH /usr/lib/pcsc/drivers/serial/libccidtwin.so\n")
    assert find_vpcd_config(tmp_path) is None
    vpcd = tmp_path / "vpcd"
    vpcd.write_text(
        'FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x8C7B\n'
        "LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID    0x8C7B\n"
    )
    assert find_vpcd_config(tmp_path) == vpcd
    assert find_vpcd_config(tmp_path / "missing") is None


def test_no_vpcd_driver_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcscd_helper, "READER_CONF_DIR", tmp_path)
    monkeypatch.setattr(pcscd_helper, "find_pcscd", lambda: "/usr/sbin/pcscd")
    with pytest.raises(PcscdUnavailable, match="vsmartcard-vpcd"):
        ensure_pcscd(timeout=0.1)


def test_no_pcscd_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcscd_helper, "find_pcscd", lambda: None)
    with pytest.raises(PcscdUnavailable, match="pcscd is not installed"):
        ensure_pcscd(timeout=0.1)


def test_vpcd_lock_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "vpcd.lock"
    with vpcd_lock(path=lock):
        assert lock.read_text().startswith("pid ")
        # flock locks belong to the open file: a second open in the same process conflicts too.
        with pytest.raises(PcscdError, match="in use by pid"), vpcd_lock(timeout=0.3, path=lock):
            pass
    with vpcd_lock(timeout=0.3, path=lock):
        pass
