"""Text tables as metric exports write them: a header of sensor names, a time column, other separators; the
names reach the bundle, and a test file whose header orders the sensors otherwise is refused."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from models.tables import TableError, parse_table
from tests.conftest import SAMPLE
from training.cli import main
from training.data import DataError, load_named_parts, load_table

VALUES = np.array([[0.5, 10.0, -1.0], [0.25, 11.0, -2.0], [0.125, 12.5, 3.0]])


def table_text(header: str | None, rows: list[str]) -> str:
    return "\n".join(([header] if header else []) + rows) + "\n"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (table_text(None, ["0.5,10,-1", "0.25,11,-2", "0.125,12.5,3"]), None),
        (table_text("cpu,mem,disk", ["0.5,10,-1", "0.25,11,-2", "0.125,12.5,3"]), ["cpu", "mem", "disk"]),
        (
            table_text(
                "datetime;cpu;mem;disk",
                [
                    "2020-03-09 10:14:33;0.5;10;-1",
                    "2020-03-09 10:14:34;0.25;11;-2",
                    "2020-03-09 10:14:35;0.125;12.5;3",
                ],
            ),
            ["cpu", "mem", "disk"],
        ),
        (
            table_text(
                "timestamp\tcpu\tmem\tdisk",
                ["1700000000\t0.5\t10\t-1", "1700000060\t0.25\t11\t-2", "1700000120\t0.125\t12.5\t3"],
            ),
            ["cpu", "mem", "disk"],
        ),
        (
            table_text(
                None,
                [
                    "2020-03-09T10:14:33Z,0.5,10,-1",
                    "2020-03-09T10:14:34Z,0.25,11,-2",
                    "2020-03-09T10:14:35Z,0.125,12.5,3",
                ],
            ),
            None,
        ),
        (
            table_text('"CPU %","mem used","1disk"', ["0.5,10,-1", "0.25,11,-2", "0.125,12.5,3"]),
            ["CPU__", "mem_used", "_1disk"],
        ),
        (
            "\ufefftimestamp,cpu,mem,disk\r\n1700000000,0.5,10,-1\r\n1700000001,0.25,11,-2\r\n1700000002,0.125,12.5,3\r\n",
            ["cpu", "mem", "disk"],
        ),
        ("\ufeff0.5,10,-1\n0.25,11,-2\n0.125,12.5,3\n", None),
        (",cpu,mem,disk\n0,0.5,10,-1\n1,0.25,11,-2\n2,0.125,12.5,3\n", ["cpu", "mem", "disk"]),
        ("Unnamed: 0,cpu,mem,disk\n0,0.5,10,-1\n1,0.25,11,-2\n2,0.125,12.5,3\n", ["cpu", "mem", "disk"]),
        ("# exported by a tool\n0.5,10,-1\n# a gap\n0.25,11,-2\n\n0.125,12.5,3\n", None),
        ("0.5,10,-1,\n0.25,11,-2,\n0.125,12.5,3,\n", None),
        (
            'Time,"cpu, user",mem,disk\n2024-01-01,0.5,10,-1\n2024-01-02,0.25,11,-2\n2024-01-03,0.125,12.5,3\n',
            ["cpu__user", "mem", "disk"],
        ),
        (
            "time\tcpu, user\tmem\tdisk\n1\t0.5\t10\t-1\n2\t0.25\t11\t-2\n3\t0.125\t12.5\t3\n",
            ["cpu__user", "mem", "disk"],
        ),
        ("sep=;\ncpu;mem;disk\n0.5;10;-1\n0.25;11;-2\n0.125;12.5;3\n", ["cpu", "mem", "disk"]),
    ],
    ids=[
        "plain",
        "header",
        "semicolons-date",
        "tabs-epoch-timestamp",
        "date-no-header",
        "names-made-valid",
        "bom-crlf-epoch",
        "bom-no-header",
        "pandas-index",
        "pandas-unnamed-index",
        "comments-blank-lines",
        "trailing-separator",
        "quoted-name-with-comma",
        "tab-name-with-comma",
        "excel-sep-hint",
    ],
)
def test_a_table_reads_to_the_same_values_with_its_header_names(text: str, names: list[str] | None) -> None:
    table = parse_table(text, "t.csv")
    np.testing.assert_array_equal(table.values, VALUES)
    assert table.names == names


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("cpu,mem\n0.5,1\n0.7,oops\n", "line 3, mem: 'oops' is not a number"),
        ("0.5,1\n0.7,1,2\n", "line 2: 3 fields, the first row has 2"),
        ("cpu,cpu\n0.5,1\n0.7,2\n", "names a sensor twice"),
        ("cpu,\n0.5,1\n0.7,2\n", "empty name"),
        ("time\n2020-01-01\n2020-01-02\n", "no sensor column"),
        ("cpu,mem\n", "a header and no rows"),
        ("\n\n", "empty"),
        ("1,null,3\n4,5,6\n7,8,9\n", "line 1, column 2: 'null' is not a number"),
        ("cpu,mem\n\n\n1,2\n3,x\n", "line 5, mem: 'x' is not a number"),
        (",cpu,\n0,1,2\n1,3,4\n", "line 1: the header has an empty name"),
    ],
)
def test_a_table_that_cannot_be_a_series_is_refused_with_where_and_why(text: str, reason: str) -> None:
    with pytest.raises(TableError, match="t.csv") as raised:
        parse_table(text, "t.csv")
    assert reason in str(raised.value)


@pytest.mark.parametrize("name", ["time", "_time", "Time (UTC)", "time_ms", "TIMESTAMP_S", "Datetime", "ts"])
def test_a_numeric_first_column_named_as_a_time_is_left_out(name: str) -> None:
    table = parse_table(f"{name},cpu\n1700000000,0.5\n1700000060,0.25\n", "t.csv")
    assert table.names == ["cpu"]
    np.testing.assert_array_equal(table.values, [[0.5], [0.25]])


@pytest.mark.parametrize("name", ["tsdb_rate", "times_seen", "dates_pending", "cpu"])
def test_a_numeric_first_column_with_another_name_is_a_sensor(name: str) -> None:
    assert parse_table(f"{name},cpu2\n3,0.5\n4,0.25\n", "t.csv").names == [name, "cpu2"]


def test_gzip_and_max_rows_apply_to_tables_with_headers(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.csv.gz", "wt") as handle:
        handle.write(table_text("time,cpu,mem", [f"2020-01-01 00:0{i},{i},{2 * i}" for i in range(5)]))
    table = load_table(tmp_path / "a.csv.gz", max_rows=3)
    assert table.names == ["cpu", "mem"] and table.values.dtype == np.float32
    np.testing.assert_array_equal(table.values, [[0, 0], [1, 2], [2, 4]])


def test_a_latin_1_header_is_read_and_its_names_made_valid(tmp_path: Path) -> None:
    (tmp_path / "excel.csv").write_bytes(
        "time;Temp °C;Druck\n2024-01-01;1.5;2\n2024-01-02;2.5;3\n".encode("cp1252")
    )
    table = load_table(tmp_path / "excel.csv")
    assert table.names == ["Temp__C", "Druck"]
    np.testing.assert_array_equal(table.values, [[1.5, 2], [2.5, 3]])


def test_fleet_parts_must_name_the_same_sensors_in_the_same_order(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("cpu,mem\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("mem,cpu\n1,2\n3,4\n")
    (tmp_path / "c.csv").write_text("1,2\n3,4\n")
    assert load_named_parts([tmp_path / "a.csv", tmp_path / "c.csv"])[1] == ["cpu", "mem"]
    with pytest.raises(DataError, match="name different sensors"):
        load_named_parts([tmp_path / "a.csv", tmp_path / "b.csv"])


def test_header_names_become_the_bundles_sensors_and_a_reordered_test_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = load_table(SAMPLE / "train.txt.gz", max_rows=3000).values
    names = [f"m{i}" for i in range(series.shape[1])]
    rows = [
        ",".join([f"2024-01-01T{i // 60:02d}:{i % 60:02d}", *(f"{v:.6g}" for v in row)])
        for i, row in enumerate(series)
    ]
    (tmp_path / "train.csv").write_text(table_text(",".join(["time", *names]), rows))
    models = tmp_path / "models"
    args = [
        "train",
        "--model",
        "pca",
        "--train",
        str(tmp_path / "train.csv"),
        "--out",
        str(models),
        "--name",
        "p",
    ]
    assert main([*args, "--version", "v1", "--no-report", "--quiet", "--cross-fit-folds", "0"]) == 0
    assert Manifest.load(models / "p" / "v1").feature_names == names

    swapped = [names[1], names[0], *names[2:]]
    test_rows = [",".join(f"{v:.6g}" for v in row) for row in series[:500]]
    (tmp_path / "test.csv").write_text(table_text(",".join(swapped), test_rows))
    np.save(tmp_path / "labels.npy", np.zeros(500))
    capsys.readouterr()
    evaluate = ["evaluate", "--bundle", str(models / "p" / "v1"), "--labels", str(tmp_path / "labels.npy")]
    assert main([*evaluate, "--test", str(tmp_path / "test.csv")]) == 2
    assert "the model's sensors, in order, are m0, m1" in capsys.readouterr().err
    (tmp_path / "test.csv").write_text(table_text(",".join(names), test_rows))
    assert main([*evaluate, "--test", str(tmp_path / "test.csv")]) == 0
