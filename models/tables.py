"""Reading a series from a text table as metric exports write them: a header row of sensor names or none, a
time or index column first or none, commas, semicolons or tabs.

- **Text**: UTF-8 (a byte-order mark, as Excel writes, is dropped), else Latin-1; lines starting with ``#``
  and blank lines are skipped (as ``numpy.loadtxt`` does).
- **Separator**: the one a first line ``sep=;`` names (Excel), else the first of ``,``, ``;`` and a tab that
  splits the first two lines into the same number of fields (more than one; quotes respected), else the
  first that splits the first line; none: blanks. A separator ending every line (an empty last
  column) is dropped.
- **Header**: the first line is one when none of its fields after the first is a number and one of them is
  not a number where the second line's is (``time,cpu,mem`` over ``2024-05-01 00:00,0.3,0.7``); a first line
  with numbers in it is data. Its names become the bundle's sensor names (each character outside
  ``[A-Za-z0-9_.:-]`` made ``_``, as the service's sensor names allow), so alerts name ``cpu`` rather than
  ``sensor_2``.
- **Time or index column**: the first column is left out when its header is a time's name (``time``,
  ``timestamp``, ``datetime``, ``date``, ``ts``, alone or before what is not a letter: ``_time``, ``time_ms``,
  ``Time (UTC)``), an index's (empty, ``index``, or pandas's ``Unnamed: 0``),
  or when its first value is not a number (a date). Rows are taken in file order, one per step: the times are
  not read.
- Any other value that is not a number is refused with its line and column.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SEPARATORS = (",", ";", "\t")
# A first column named a time: ``time``, ``timestamp``, ``datetime``, ``date`` or ``ts``, alone or followed by
# what is not a letter (``_time`` of InfluxDB, ``time_ms``, ``Time (UTC)``, ``timestamp_s``).
TIME_NAME = re.compile(r"_?(timestamp|datetime|time|date|ts)([^a-z].*)?", re.IGNORECASE)
INDEX_NAMES = frozenset(("", "index", "unnamed: 0"))
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.:-]")


class TableError(ValueError):
    """A text table that cannot be read as a series, with the reason."""


@dataclass(frozen=True)
class Table:
    """``values`` [T, C] in file order; ``names`` from the header (None without one)."""

    values: npt.NDArray[np.floating[Any]]
    names: list[str] | None


def read_text(path: Path) -> str:
    """The file's text (``.gz`` decompressed): UTF-8 without its byte-order mark, else Latin-1."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _fields(line: str, separator: str | None) -> list[str]:
    if separator is None:
        return line.split()
    return [f.strip() for f in next(csv.reader([line], delimiter=separator, skipinitialspace=True))]


def _separator(first: str, second: str | None) -> str | None:
    """The first candidate splitting both lines alike, else the first splitting the first line at all."""
    splitting = [c for c in SEPARATORS if len(_fields(first, c)) > 1]
    alike = [c for c in splitting if second is None or len(_fields(second, c)) == len(_fields(first, c))]
    chosen = alike or splitting
    return chosen[0] if chosen else None


def sensor_name(field: str) -> str:
    """A header field as a sensor name: ``[A-Za-z_][A-Za-z0-9_.:-]``, at most 64 characters."""
    name = _NOT_NAME.sub("_", field)[:64]
    return name if name[:1].isalpha() or name[:1] == "_" else ("_" + name)[:64]


def parse_table(text: str, source: str) -> Table:
    """The series of a text table (see the module's rules); ``source`` names it in errors."""
    numbered = [
        (number, line.strip())
        for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise TableError(f"{source}: empty")
    lines = [line for _, line in numbered]
    hint = re.fullmatch(r"sep=(.)", lines[0], flags=re.IGNORECASE)  # Excel's first line naming the separator
    if hint:
        numbered, lines = numbered[1:], lines[1:]
        if not lines:
            raise TableError(f"{source}: empty")
    separator = hint.group(1) if hint else _separator(lines[0], lines[1] if len(lines) > 1 else None)
    if separator is not None and all(line.endswith(separator) for line in lines):
        lines = [line[: -len(separator)] for line in lines]
    head = _fields(lines[0], separator)
    if len(lines) > 1:
        second = _fields(lines[1], separator)
        header = (
            len(second) == len(head)
            and not any(_number(h) for h in head[1:])
            and any(not _number(h) and _number(v) for h, v in zip(head, second, strict=True))
        )
    else:
        header = not all(_number(h) for h in head)
    start = 1 if header else 0
    rows, lines_of = lines[start:], [number for number, _ in numbered][start:]
    if not rows:
        raise TableError(f"{source}: a header and no rows")
    sample = _fields(rows[0], separator)
    named_away = header and (head[0].lower() in INDEX_NAMES or TIME_NAME.fullmatch(head[0]) is not None)
    skip = int(named_away or not _number(sample[0]))
    if len(sample) <= skip:
        raise TableError(f"{source}: no sensor column besides the time")
    names = None
    if header:
        if any(not h for h in head[skip:]):
            raise TableError(f"{source}: line {numbered[0][0]}: the header has an empty name")
        names = [sensor_name(h) for h in head[skip:]]
        if len(set(names)) != len(names):
            raise TableError(f"{source}: the header names a sensor twice ({', '.join(names)})")
    width = len(sample)
    for row, line in enumerate(rows):
        count = (line.count(separator) + 1) if separator else len(line.split())
        if count != width and len(_fields(line, separator)) != width:  # a quoted field may hold the separator
            raise TableError(f"{source}: line {lines_of[row]}: {count} fields, the first row has {width}")
    try:
        values = np.loadtxt(
            rows,
            delimiter=separator,
            usecols=range(skip, width),
            dtype=np.float64,
            ndmin=2,
            quotechar='"',
            comments=None,
        )
    except ValueError as exc:
        where = _first_bad_field(rows, lines_of, separator, skip, names)
        raise TableError(f"{source}: {where or exc}") from exc
    return Table(values, names)


def _first_bad_field(
    rows: list[str], lines_of: list[int], separator: str | None, skip: int, names: list[str] | None
) -> str | None:
    """Where a table that did not parse goes wrong: the first value that is not a number."""
    for row, line in enumerate(rows):
        for column, field in enumerate(_fields(line, separator)[skip:]):
            if not _number(field):
                label = names[column] if names else f"column {column + skip + 1}"
                return f"line {lines_of[row]}, {label}: {field!r} is not a number"
    return None
