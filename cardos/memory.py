"""The card's non-volatile memory: named cells, a journal that commits atomically, and tearing.

Every command's writes are staged in a :class:`Transaction` and reach memory only through
:meth:`Transaction.commit`, which writes the journal, then the commit mark, then the cells, then clears
the mark. Power may fail before any one of these physical writes (:meth:`Memory.arm_tear`); at the next
power-on :meth:`Memory.recover` replays a marked journal and ignores an unmarked one, so the card holds
either the whole effect of the command or none of it (spec §2.4, Tearing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

JOURNAL_MARK = "~journal"
_JOURNAL_ENTRY = "~journal."


class PowerLoss(Exception):
    """The card lost power before a write completed; it answers nothing until the next power-on."""


class Memory:
    """Named cells of bytes, written only through journalled transactions."""

    def __init__(self, cells: Mapping[str, bytes] | None = None) -> None:
        self._cells: dict[str, bytes] = dict(cells or {})
        self.writes = 0
        """Physical writes performed since the memory was made (tear points are counted from arming)."""
        self._tear_at: int | None = None
        self.dirty = False
        """Set by every physical write; an image keeper clears it after saving."""

    # --- tearing -------------------------------------------------------------------------------------

    def arm_tear(self, write_index: int | None) -> None:
        """Make the ``write_index``-th physical write from now fail (1-based); ``None`` disarms."""
        self._tear_at = None if write_index is None else self.writes + write_index

    @property
    def tear_armed(self) -> bool:
        """True while a tear is pending."""
        return self._tear_at is not None

    def _physical_write(self, name: str, value: bytes | None) -> None:
        if self._tear_at is not None and self.writes + 1 >= self._tear_at:
            self._tear_at = None
            raise PowerLoss(f"power lost before write {self.writes + 1}")
        self.writes += 1
        self.dirty = True
        if value is None:
            self._cells.pop(name, None)
        else:
            self._cells[name] = value

    # --- reading and writing -------------------------------------------------------------------------

    def get(self, name: str) -> bytes | None:
        """The committed value of a cell, or ``None``."""
        return self._cells.get(name)

    def names(self, prefix: str = "") -> Iterator[str]:
        """Committed cell names with a prefix (journal cells excluded)."""
        return (n for n in list(self._cells) if n.startswith(prefix) and not n.startswith("~"))

    def begin(self) -> Transaction:
        """Start staging writes."""
        return Transaction(self)

    def recover(self) -> None:
        """Power-on recovery: finish a committed journal, forget an uncommitted one."""
        mark = self._cells.get(JOURNAL_MARK)
        if mark is None:
            return
        count = int.from_bytes(mark, "big")
        for index in range(count):
            entry = self._cells[f"{_JOURNAL_ENTRY}{index}"]
            name, value = _decode_entry(entry)
            self._physical_write(name, value)
        self._physical_write(JOURNAL_MARK, None)

    # --- images --------------------------------------------------------------------------------------

    def to_image(self) -> dict[str, str]:
        """The memory as a JSON-able mapping of cell name to hex."""
        return {name: value.hex().upper() for name, value in sorted(self._cells.items())}

    @classmethod
    def from_image(cls, image: Mapping[str, str]) -> Memory:
        """Rebuild memory from :meth:`to_image` output."""
        return cls({name: bytes.fromhex(value) for name, value in image.items()})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the image to a file atomically (temporary file, fsync, rename)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format": "onecard-card-image/1", "cells": self.to_image()}, fh, indent=0)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        self.dirty = False

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Memory:
        """Read an image file written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("format") != "onecard-card-image/1":
            raise ValueError(f"{path}: not a card image")
        return cls.from_image(doc["cells"])


class Transaction:
    """Writes staged for one atomic commit; reads see the staged values first."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        self._staged: dict[str, bytes | None] = {}

    def get(self, name: str) -> bytes | None:
        """A cell as this transaction sees it."""
        if name in self._staged:
            return self._staged[name]
        return self._memory.get(name)

    def put(self, name: str, value: bytes | None) -> None:
        """Stage a write (``None`` deletes the cell)."""
        if name.startswith("~"):
            raise ValueError("journal cells are reserved")
        self._staged[name] = value

    def names(self, prefix: str = "") -> list[str]:
        """Cell names with a prefix as this transaction sees them."""
        names = set(self._memory.names(prefix))
        for name, value in self._staged.items():
            if name.startswith(prefix):
                if value is None:
                    names.discard(name)
                else:
                    names.add(name)
        return sorted(names)

    @property
    def pending(self) -> bool:
        """True when writes are staged."""
        return bool(self._staged)

    def discard(self) -> None:
        """Forget the staged writes."""
        self._staged.clear()

    def commit(self) -> None:
        """Write the staged cells atomically: journal, mark, cells, unmark (2n + 2 physical writes)."""
        staged = [(n, v) for n, v in self._staged.items() if self._memory.get(n) != v]
        self._staged.clear()
        if not staged:
            return
        memory = self._memory
        for index, (name, value) in enumerate(staged):
            memory._physical_write(f"{_JOURNAL_ENTRY}{index}", _encode_entry(name, value))
        memory._physical_write(JOURNAL_MARK, len(staged).to_bytes(2, "big"))
        for name, value in staged:
            memory._physical_write(name, value)
        memory._physical_write(JOURNAL_MARK, None)


def _encode_entry(name: str, value: bytes | None) -> bytes:
    raw = name.encode()
    if value is None:
        return bytes((len(raw),)) + raw + b"\x00"
    return bytes((len(raw),)) + raw + b"\x01" + value


def _decode_entry(entry: bytes) -> tuple[str, bytes | None]:
    size = entry[0]
    name = entry[1 : 1 + size].decode()
    flag = entry[1 + size]
    return name, (entry[2 + size :] if flag else None)
