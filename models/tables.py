"""Reading a series from a text table as metric exports write them: a header row of sensor names or none, a
time column first or none, commas, semicolons or tabs.

- **Separator**: the first of ``,``, ``;`` and a tab that the first line holds; none of them: blanks.
- **Header**: the first line is one when a field of it is not a number where the second line's is (``time,
  cpu,mem`` over ``2024-05-01 00:00,0.3,0.7``); a first line of numbers is data. Its names become the bundle's
  sensor names (each character outside ``[A-Za-z0-9_.:-]`` made ``_``, as the service's sensor names allow),
  so alerts name ``cpu`` rather than ``sensor_2``.
- **Time column**: the first column is left out when its header is a time's name (``time``, ``timestamp``,
  ``datetime``, ``date``, ``ts``) or when its first value is not a number (a date). Rows are taken in file
  order, one per step: the times are not read.
- Any other value that is not a number is refused with its row and column.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SEPARATORS = (",", ";", "\t")
TIME_NAMES = frozenset(("time", "timestamp", "datetime", "date", "ts"))
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.:-]")


class TableError(ValueError):
    """A text table that cannot be read as a series, with the reason."""


@dataclass(frozen=True)
class Table:
    """``values`` [T, C] in file order; ``names`` from the header (None without one)."""

    values: npt.NDArray[np.floating[Any]]
    names: list[str] | None


def read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as handle:
            return handle.read()
    return path.read_text()


def _number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _fields(line: str, separator: str | None) -> list[str]:
    return [f.strip().strip('"').strip("'").strip() for f in line.split(separator)]


def sensor_name(field: str) -> str:
    """A header field as a sensor name: ``[A-Za-z_][A-Za-z0-9_.:-]``, at most 64 characters."""
    name = _NOT_NAME.sub("_", field)[:64]
    return name if name[:1].isalpha() or name[:1] == "_" else ("_" + name)[:64]


def parse_table(text: str, source: str) -> Table:
    """The series of a text table (see the module's rules); ``source`` names it in errors."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise TableError(f"{source}: empty")
    first = lines[0]
    separator = next((s for s in SEPARATORS if s in first), None)
    head = _fields(first, separator)
    if len(lines) > 1:
        second = _fields(lines[1], separator)
        header = len(second) == len(head) and any(
            not _number(h) and _number(v) for h, v in zip(head, second, strict=True)
        )
    else:
        header = not all(_number(h) for h in head)
    rows = lines[1:] if header else lines
    if not rows:
        raise TableError(f"{source}: a header and no rows")
    sample = _fields(rows[0], separator)
    time_first = (header and head[0].lower() in TIME_NAMES) or not _number(sample[0])
    skip = 1 if time_first else 0
    if len(sample) <= skip:
        raise TableError(f"{source}: no sensor column besides the time")
    names = None
    if header:
        names = [sensor_name(h) for h in head[skip:]]
        if any(not h for h in head[skip:]):
            raise TableError(f"{source}: the header has an empty name")
        if len(set(names)) != len(names):
            raise TableError(f"{source}: the header names a sensor twice ({', '.join(names)})")
    width = len(sample)
    counts = (
        [line.count(separator) + 1 for line in rows] if separator else [len(line.split()) for line in rows]
    )
    if any(count != width for count in counts):
        row = next(r for r, count in enumerate(counts) if count != width)
        raise TableError(
            f"{source}: line {row + 1 + header}: {counts[row]} fields, the first row has {width}"
        )
    try:
        values = np.loadtxt(
            rows,
            delimiter=separator,
            usecols=range(skip, len(sample)),
            dtype=np.float64,
            ndmin=2,
            quotechar='"',
        )
    except ValueError as exc:
        raise TableError(
            _first_bad_field(rows, separator, skip, len(sample), names, source, header) or f"{source}: {exc}"
        ) from exc
    return Table(values, names)


def _first_bad_field(
    rows: list[str],
    separator: str | None,
    skip: int,
    width: int,
    names: list[str] | None,
    source: str,
    header: bool,
) -> str | None:
    """Where a table that did not parse goes wrong: the first row of another width or value not a number."""
    for row, line in enumerate(rows):
        fields = _fields(line, separator)
        where = f"{source}: line {row + 1 + header}"
        if len(fields) != width:
            return f"{where}: {len(fields)} fields, the first row has {width}"
        for column, field in enumerate(fields[skip:]):
            if not _number(field):
                label = names[column] if names else f"column {column + skip + 1}"
                return f"{where}, {label}: {field!r} is not a number"
    return None
