"""The metrics log (``metrics.jsonl``): one JSON record per line, written so that a kill cannot
leave it unreadable.

- `append_record` writes each record as one whole line with a single ``write`` on a file opened
  for appending; a torn last line left by an earlier kill is cut off first, so that the next
  record never gets glued to it.
- `read_metrics` skips a line that does not parse (what a kill during an append leaves) with a
  warning that names the file and the line.
- `truncate_after_step` cuts the log back to a checkpoint's step when a run resumes, so that
  records written after the last checkpoint (and about to be written again) appear once.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

__all__ = ["append_record", "read_metrics", "truncate_after_step"]

PathLike = Union[str, os.PathLike]


def _torn_tail(data: bytes) -> int:
    """Length of ``data`` without a last line that lacks its newline (0 when all of it is torn)."""
    if not data or data.endswith(b"\n"):
        return len(data)
    return data.rfind(b"\n") + 1


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _read_at(fd: int, offset: int, size: int) -> bytes:
    # lseek + read rather than os.pread, which Windows lacks; O_APPEND writes go to the end anyway.
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def append_record(path: PathLike, record: Dict[str, Any]) -> None:
    """Append ``record`` to the log at ``path`` as one whole line (created when missing)."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and _read_at(fd, size - 1, 1) != b"\n":
            # A kill during an earlier append left half a line: drop it rather than glue onto it.
            keep = _torn_tail(_read_at(fd, 0, size))
            os.ftruncate(fd, keep)
            _warn(f"{path}: dropped a torn last line ({size - keep} bytes, left by a killed run)")
        # One write for the whole line; the loop only matters for a short write (a full disk).
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _parse(path: Path) -> Tuple[List[Tuple[int, Dict[str, Any]]], List[int], bool]:
    """(line number, record) pairs, the numbers of lines that do not parse, and whether the last
    line was torn (no newline and no valid JSON)."""
    data = path.read_bytes()
    records: List[Tuple[int, Dict[str, Any]]] = []
    bad: List[int] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append((number, record))
        else:
            bad.append(number)
    torn = bool(bad) and bad[-1] == len(lines) and not data.endswith(b"\n")
    return records, bad, torn


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl file, in order; lines that are not JSON objects (a torn
    last line after a kill) are skipped with a RuntimeWarning naming them."""
    path = Path(path)
    records, bad, torn = _parse(path)
    if bad:
        what = "a torn last line" if torn and len(bad) == 1 else f"line(s) {bad} (not JSON records)"
        _warn(f"{path}: skipped {what}")
    return [r for _, r in records]


def truncate_after_step(path: PathLike, step: int) -> int:
    """Cut the log back to records of steps <= ``step`` (a resumed checkpoint's), dropping lines
    that do not parse; rewrites the file atomically and returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    records, bad, torn = _parse(path)
    later = [r for _, r in records if _step_of(r) > step]
    if not bad and not later:
        return 0
    kept = [r for _, r in records if _step_of(r) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    parts = []
    if bad:
        parts.append("a torn last line" if torn and len(bad) == 1 else f"{len(bad)} unreadable line(s)")
    if later:
        parts.append(f"{len(later)} record(s) after step {step} (written after the checkpoint)")
    _warn(f"{path}: resuming at step {step}: dropped " + " and ".join(parts))
    return len(bad) + len(later)


def _step_of(record: Dict[str, Any]) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) else 0
