"""Where a dispatch consumer keeps its resume cursor (the highest acknowledged
event id) between runs."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_NUMBERS = re.compile(r"\d+")
#: What a stored cursor may look like: one opaque event id (the server's are
#: `<sequence>-0`), printable ASCII without spaces.
_EVENT_ID = re.compile(r"[!-~]{1,200}")


class CursorFileError(ValueError):
    """The cursor file exists but holds no usable cursor (empty, torn or not text).
    Resuming without it would silently skip what arrived meanwhile, so the consumer
    does not start: restore the file, or delete it to start from new events only."""


class CursorStore(Protocol):
    """Loads and saves the resume cursor; "" means no cursor yet."""

    def load(self) -> str: ...

    def save(self, event_id: str) -> None: ...


class MemoryCursorStore:
    """A cursor kept in memory (tests, or consumers that need no resume)."""

    def __init__(self, event_id: str = "") -> None:
        self.event_id = event_id

    def load(self) -> str:
        return self.event_id

    def save(self, event_id: str) -> None:
        self.event_id = event_id


class FileCursorStore:
    """A cursor kept in a small text file. Each save writes a temporary file in the
    same directory, fsyncs it and renames it over the old one (os.replace), so a crash
    leaves either the old or the new cursor, never a torn file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> str:
        """The saved cursor; "" when the file does not exist yet. Raises
        CursorFileError for a file without a valid cursor, OSError when it cannot be
        read."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ""
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = None
        if not text or _EVENT_ID.fullmatch(text) is None:
            what = "is empty" if not raw.strip() else "does not hold an event id"
            raise CursorFileError(
                f"cursor file {self.path} {what}; restore it, or delete it to start from new events only "
                "(events that arrived while the consumer was down may then be missed)"
            )
        return text

    def save(self, event_id: str) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(event_id + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Makes the rename durable (best effort: not every platform can open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def event_order(event_id: str) -> tuple[tuple[int, ...], int, str]:
    """A sort key for event ids. Ids increase per department; the server's are
    `<sequence>-0`, so they are compared by their numbers, part by part."""
    numbers = tuple(int(n) for n in _NUMBERS.findall(event_id))
    return numbers, len(event_id), event_id


def is_after(event_id: str, cursor: str) -> bool:
    """True when `event_id` comes after `cursor` ("" comes before everything)."""
    return not cursor or event_order(event_id) > event_order(cursor)
