"""Make sure pcscd runs with the vsmartcard vpcd driver, starting it when needed.

Debian's ``vsmartcard-vpcd`` installs the driver ``/usr/lib/pcsc/drivers/serial/libifdvpcd.so`` and the
reader configuration ``/etc/reader.conf.d/vpcd`` (``CHANNELID 0x8C7B`` = port 35963; the driver makes two
slots, ``Virtual PCD 00 00`` on 35963 and ``Virtual PCD 00 01`` on 35964, and listens on both). pcscd reads
``/etc/reader.conf.d`` when it starts, and again when asked to rescan (``pcscd --hotplug``), so a pcscd
started before the package was installed has no vpcd readers.

:func:`ensure_pcscd` reuses a running pcscd that lists the vpcd readers, asks one that does not to rescan,
and otherwise starts ``pcscd --foreground`` as a child process; the returned :class:`Pcscd` stops only a
pcscd it started. Run ``python -m simulators.pcscd`` to start one by hand (it stays until Ctrl-C).
:func:`vpcd_lock` serialises processes that drive the vpcd slots (test sessions take it).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

VPCD_READERS: tuple[str, ...] = ("Virtual PCD 00 00", "Virtual PCD 00 01")
"""The readers the vpcd driver provides (slot 0 and slot 1)."""

READER_CONF_DIR = Path("/etc/reader.conf.d")
PCSCD_PID_FILE = Path("/run/pcscd/pcscd.pid")
VPCD_LOCK_FILE = Path(tempfile.gettempdir()) / "onecard-vpcd.lock"


class PcscdError(RuntimeError):
    """pcscd could not be made to serve the vpcd readers."""


class PcscdUnavailable(PcscdError):
    """pcscd or the vpcd driver is not installed (run ``scripts/setup.sh``)."""


def find_pcscd() -> str | None:
    """The pcscd executable, or None."""
    found = shutil.which("pcscd")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/pcscd", "/usr/local/sbin/pcscd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_vpcd_config(conf_dir: Path | None = None) -> Path | None:
    """The file of ``conf_dir`` (default ``/etc/reader.conf.d``) that loads the vpcd driver, or None."""
    try:
        entries = sorted((READER_CONF_DIR if conf_dir is None else conf_dir).iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "LIBPATH" and "ifdvpcd" in words[1]:
                return entry
    return None


def list_readers() -> list[str] | None:
    """The readers pyscard lists (``smartcard.System.readers()``); None when pcscd does not answer."""
    from smartcard.Exceptions import SmartcardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException
    from smartcard.System import readers

    try:
        return [str(reader) for reader in readers()]
    except (SmartcardException, BaseSCardException):
        return None


def running_pcscd_pid() -> int | None:
    """The pid of a live pcscd from its pid file, or None."""
    try:
        pid = int(PCSCD_PID_FILE.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "pcscd" else None


class Pcscd:
    """A pcscd serving the vpcd readers; :meth:`stop` ends it only if this process started it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        *,
        remove_log: bool = False,
    ) -> None:
        self.process = process
        self.log_path = log_path
        self._remove_log = remove_log

    @property
    def started(self) -> bool:
        """True when this process started pcscd (and will stop it)."""
        return self.process is not None

    @property
    def readers(self) -> list[str]:
        """The readers pcscd lists now."""
        return list_readers() or []

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pcscd if this handle started it (SIGTERM, then SIGKILL); idempotent.

        The log file chosen by :func:`ensure_pcscd` is deleted when pcscd exits cleanly.
        """
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._remove_log and process.returncode == 0 and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log of a pcscd this handle started."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Pcscd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _have_all(wanted: Sequence[str]) -> bool:
    present = list_readers()
    return present is not None and all(name in present for name in wanted)


def _wait_for(wanted: Sequence[str], deadline: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    while True:
        if _have_all(wanted):
            return True
        if process is not None and process.poll() is not None:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def ensure_pcscd(
    timeout: float = 10.0,
    *,
    readers: Sequence[str] = VPCD_READERS,
    log_path: str | os.PathLike[str] | None = None,
) -> Pcscd:
    """Return a pcscd that lists ``readers``, starting ``pcscd --foreground`` when none runs.

    ``log_path`` receives the output of a pcscd started here (default: a file in the temporary
    directory). Raises :class:`PcscdUnavailable` when pcscd or the vpcd driver is not installed and
    :class:`PcscdError` when pcscd does not come up with the readers within ``timeout`` seconds.
    """
    binary = find_pcscd()
    if binary is None:
        raise PcscdUnavailable("pcscd is not installed (Debian package pcscd; run scripts/setup.sh)")
    if find_vpcd_config() is None:
        raise PcscdUnavailable(
            f"no vpcd driver configured in {READER_CONF_DIR} (Debian package vsmartcard-vpcd; run scripts/setup.sh)"
        )
    deadline = time.monotonic() + timeout
    present = list_readers()
    if present is not None:
        if all(name in present for name in readers):
            return Pcscd()
        # A pcscd started before vsmartcard-vpcd was installed: ask it to read reader.conf.d again.
        subprocess.run([binary, "--hotplug"], check=False, capture_output=True, timeout=timeout)
        if _wait_for(readers, deadline):
            return Pcscd()
        raise PcscdError(
            f"pcscd is running (pid {running_pcscd_pid()}) but lists {present}, not {list(readers)}; it was "
            "probably started before vsmartcard-vpcd was installed: restart it (service pcscd restart)"
        )
    if running_pcscd_pid() is not None:
        # Starting up, or not answering: give it the time we have before starting another.
        if _wait_for(readers, deadline):
            return Pcscd()
        raise PcscdError(f"pcscd (pid {running_pcscd_pid()}) runs but does not list {list(readers)}")
    return _start(binary, readers, deadline, log_path)


def _start(binary: str, readers: Sequence[str], deadline: float, log_path: str | os.PathLike[str] | None) -> Pcscd:
    path = Path(log_path) if log_path is not None else Path(tempfile.gettempdir()) / f"onecard-pcscd-{os.getpid()}.log"
    with open(path, "wb") as log_file:
        try:
            process = subprocess.Popen(
                [binary, "--foreground"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise PcscdError(f"cannot start {binary}: {exc}") from exc
    handle = Pcscd(process, path, remove_log=log_path is None)
    atexit.register(handle.stop)
    if _wait_for(readers, deadline, process):
        return handle
    code = process.poll()
    handle._remove_log = False  # keep the log of a failed start
    handle.stop()
    state = f"exited with status {code}" if code is not None else "did not list them in time"
    hint = "" if os.geteuid() == 0 else " (pcscd needs root to create /run/pcscd)"
    raise PcscdError(f"pcscd started for {list(readers)} {state}{hint}; its log ({path}):\n{handle.log_tail()}")


@contextlib.contextmanager
def vpcd_lock(timeout: float = 600.0, path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Hold the machine-wide lock on the vpcd slots (and the pcscd serving them) for the ``with`` block.

    vpcd has one card per slot and pcscd is shared by every process: two processes driving the slots at
    once (two test runs, a test run and a benchmark) would corrupt each other's runs. Waits up to
    ``timeout`` seconds for the holder, then raises :class:`PcscdError` naming it.
    """
    lock_path = Path(path) if path is not None else VPCD_LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = lock_path.read_text(errors="replace").strip() or "another process"
                    raise PcscdError(f"the vpcd slots are in use by {holder} (lock {lock_path})") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Ensure pcscd runs with the vpcd readers; keep a pcscd started here until Ctrl-C."""
    del argv
    try:
        handle = ensure_pcscd()
    except PcscdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("pcscd readers: " + ", ".join(handle.readers))
    if not handle.started:
        print("pcscd was already running")
        return 0
    print(f"started pcscd (pid {handle.process.pid if handle.process else '?'}); Ctrl-C stops it", flush=True)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    # SIGTERM too: a background process of a non-interactive shell ignores SIGINT.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(0.5) and handle.process is not None and handle.process.poll() is None:
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
