"""The stateless window's parse without pydantic (``numeric_window``) gives exactly what validation gives: the
same array and model for every body it takes, and it takes none that validation refuses (those get the
validated path's 422, naming the field)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from service.codec import WindowInput, numeric_window, parse_score_json, validated_window
from service.errors import BadInput

NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(10**20), max_value=10**20),
)
ODD = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just(float("nan")),
    st.just(float("inf")),
    st.lists(NUMBERS, max_size=2),
)


def reference(body: bytes) -> WindowInput | str:
    try:
        return validated_window(from_json(body, allow_inf_nan=True))
    except BadInput as exc:
        return str(exc)


def parsed(body: bytes) -> WindowInput | str:
    try:
        result = parse_score_json(body)
    except BadInput as exc:
        return str(exc)
    assert isinstance(result, WindowInput)
    return result


def assert_same(body: bytes) -> None:
    got, want = parsed(body), reference(body)
    if isinstance(want, str):
        assert got == want
    else:
        assert isinstance(got, WindowInput)
        assert got.model == want.model
        assert got.window.dtype == want.window.dtype == np.float64
        np.testing.assert_array_equal(got.window, want.window)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(0, 4))
    window: list[list[object]] = [[draw(NUMBERS) for _ in range(cols)] for _ in range(rows)]
    if draw(st.booleans()) and cols:  # one odd value somewhere
        window[draw(st.integers(0, rows - 1))][draw(st.integers(0, cols - 1))] = draw(ODD)
    if draw(st.booleans()) and rows > 1:  # a row of another length
        window[0] = window[0] + [0.5]
    body: dict[str, object] = {"window": window}
    model = draw(st.one_of(st.none(), st.just("tvnet"), st.just("bad name"), st.just(None), st.just(3)))
    if draw(st.booleans()):
        body["model"] = model
    if draw(st.integers(0, 9)) == 0:
        body["extra"] = 1
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " : ")]))
    return json.dumps(body, allow_nan=True, separators=separators).encode()


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_the_fast_parse_equals_validation(body: bytes) -> None:
    assert_same(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"window": [[1, 2], [3, 4]], "model": "tvnet"}',
        b'{"window": [[1e400, 2]]}',
        b'{"window": [[NaN, 2]]}',
        b'{"window": [[true, 2]]}',
        b'{"window": [["1", 2]]}',
        b'{"window": [[1, 2], [3]]}',
        b'{"window": []}',
        b'{"window": [1, 2]}',
        b'{"window": [[[1]]]}',
        b'{"window": [[1]], "model": null}',
        b'{"window": [[1]], "model": "tv\\"net"}',
        b'{"window": [[1]], "model": "a b"}',
        b'{"window": [[123456789012345678901234567890]]}',
        b'{"window": [[1]], "window": [[2, 3]]}',
        b'{"window": [[1]], "model": "tvnet", "model": "x y"}',
        b'{"window": [[1]], "model": "tv\\u006eet"}',
        b'{ "model" : "tvnet" ,\n "window" : [ [ 1 , 2.5e-3 ] , [ -3 , 4 ] ] }',
        b'{"window": [[1, []]]}',
        b'{"window": [[1, {}]]}',
        b'{"window": [[-Infinity]]}',
        b'{"window": [[1]], "model": ""}',
        b'{"window": [[1]], "model": "tvnet\\n"}',  # re.match's $ also matches before a final newline
    ],
)
def test_edge_bodies_answer_as_validation_does(body: bytes) -> None:
    assert_same(body)


def test_the_fast_parse_takes_a_plain_window_and_refuses_the_rest() -> None:
    plain = b'{"window": [[1.5, 2], [3, -4e-3]], "model": "tvnet"}'
    fast = numeric_window(json.loads(plain), plain)
    assert fast is not None and fast.model == "tvnet"
    np.testing.assert_array_equal(fast.window, [[1.5, 2.0], [3.0, -0.004]])
    for body in (b'{"window": [[true]]}', b'{"window": [["x"]]}', b'{"window": [[1], [2, 3]]}'):
        assert numeric_window(json.loads(body), body) is None
