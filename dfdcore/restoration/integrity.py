"""Manifest parts that vouch for their own bytes, and what a run does with one that does not.

A part's name carries the first 16 hex digits of its bytes' SHA-256 (``part-STAMP-TOKEN-cDIGEST[-Ln].parquet``):
the name is chosen after the bytes are encoded, so it needs no second file, works on object stores, and a reader
that reads the bytes anyway checks them for the cost of a hash. Parquet's own structure catches much damage, but a
flipped byte inside a compressed column can decode to other values without an error: only the checksum sees that.
Parts of an earlier dfd (no digest in the name) are checked by decoding every column.

A damaged part is never skipped in silence and never fatal to the rows of the other parts: ``set_aside_damaged``
renames it to ``NAME.damaged`` (kept for a person to look at; readers list only ``*.parquet``), and the run
reports it by name and exits non-zero; the images it recorded are then redone, as if never restored.
"""
from __future__ import annotations

import hashlib
import posixpath
import re

import pyarrow as pa
import pyarrow.parquet as pq

from dfdcore.io.storage import filesystem_for, read_bytes, uri_of

DIGEST_CHARS = 16
DAMAGED_SUFFIX = ".damaged"
_DIGEST_IN_NAME = re.compile(rf"-c([0-9a-f]{{{DIGEST_CHARS}}})(?:-L\d+)?\.parquet$")


class DamagedPart(ValueError):
    """A manifest part whose bytes are not what was written (checksum), or not a manifest at all."""

    def __init__(self, part: str, why: str):
        super().__init__(f"{part}: damaged manifest part ({why}). Move it aside or delete it: the images it "
                         f"recorded are then redone by the next run (dfd restore does this itself)")
        self.part, self.why = part, why


def content_digest(data: bytes) -> str:
    """The digest a part's name carries for ``data``."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def digest_in_name(part: str) -> str | None:
    """The digest in a part's file name; None for parts of an earlier dfd, which named none."""
    found = _DIGEST_IN_NAME.search(posixpath.basename(part))
    return found.group(1) if found else None


def check_bytes(part: str, data: bytes) -> None:
    """Raise ``DamagedPart`` when ``data`` (the bytes read from ``part``) does not match the digest in its name."""
    expected = digest_in_name(part)
    if expected is not None and content_digest(data) != expected:
        raise DamagedPart(part, f"its bytes' SHA-256 begins {content_digest(data)}, its name says {expected}")


def check_part(part: str) -> None:
    """Read ``part`` and raise ``DamagedPart`` unless it is a whole manifest part: its checksum when its name has
    one, else every column decoded. FileNotFoundError when it is gone (compacted meanwhile)."""
    data = read_bytes(part)
    check_bytes(part, data)
    if digest_in_name(part) is not None:
        return
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise DamagedPart(part, f"Parquet cannot read it: {exc}") from exc
    if "source_uri" not in table.column_names:
        raise DamagedPart(part, f"not a manifest: no source_uri column among {table.column_names}")


def set_aside(part: str) -> str:
    """Rename ``part`` to ``part.damaged`` (beside it, so nothing is lost) → the new URI."""
    fs, path = filesystem_for(part)
    aside = path + DAMAGED_SUFFIX
    fs.mv(path, aside)
    return uri_of(fs, aside)


def set_aside_if_present(part: str) -> bool:
    """``set_aside`` → False instead of FileNotFoundError when another process removed ``part`` meanwhile."""
    try:
        set_aside(part)
    except FileNotFoundError:
        return False
    return True


def set_aside_damaged(parts: list[str]) -> list[tuple[str, str]]:
    """Check each of ``parts``; set the damaged ones aside → [(part, why)] of those moved. Parts deleted meanwhile
    (another process compacted them) are passed over."""
    moved = []
    for part in parts:
        try:
            check_part(part)
        except FileNotFoundError:
            continue
        except DamagedPart as exc:
            if set_aside_if_present(part):
                moved.append((part, exc.why))
    return moved
