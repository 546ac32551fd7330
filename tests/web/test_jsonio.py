"""JSON in and out: the input limits, and rendering that cannot fail on stored data."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.web import jsonio
from shared.web.errors import ForbiddenCharacters, JsonTooDeep
from shared.web.jsonio import MAX_DEPTH, RawJSON


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_at_the_limit_is_accepted_and_one_more_is_refused() -> None:
    assert jsonio.parse_body(json.dumps(nested(MAX_DEPTH, [])).encode()) == nested(MAX_DEPTH, [])
    with pytest.raises(JsonTooDeep) as err:
        jsonio.parse_body(json.dumps(nested(MAX_DEPTH + 1, [])).encode())
    assert err.value.status == 422 and err.value.code == "json-too-deep"


def test_nesting_beyond_the_parsers_recursion_limit_is_a_clean_refusal() -> None:
    with pytest.raises(JsonTooDeep):
        jsonio.parse_body(b"[" * 50_000 + b"]" * 50_000)
    with pytest.raises(JsonTooDeep):
        jsonio.parse_body(b'{"a":' * 20_000 + b"1" + b"}" * 20_000)


@pytest.mark.parametrize("body", [
    b'{"name": "a\\u0000b"}', b'{"a\\u0000": 1}', b'["\\ud800"]', b'{"x": ["ok", {"y": "\\udfff tail"}]}',
    b'{"\\udbff": 1}',
])
def test_nul_and_lone_surrogates_are_refused_anywhere(body: bytes) -> None:
    with pytest.raises(ForbiddenCharacters) as err:
        jsonio.parse_body(body)
    problem = err.value.to_problem()
    assert problem["type"] == "urn:custos:problem:forbidden-characters"
    assert "\x00" not in json.dumps(problem) and "ud800" not in json.dumps(problem)


def test_paired_surrogates_and_other_characters_pass() -> None:
    assert jsonio.parse_body(b'{"emoji": "\\ud83d\\ude00", "t": "tab\\tcr\\r"}') == {
        "emoji": "\U0001f600", "t": "tab\tcr\r"}


def test_constants_that_are_not_json_are_refused() -> None:
    for text in (b"NaN", b"[Infinity]", b'{"a": -Infinity}'):
        with pytest.raises(ValueError):
            jsonio.parse_body(text)


def test_rendering_deeper_than_pydantic_and_the_c_encoder_allow() -> None:
    deep = nested(3000)
    out = jsonio.dumps({"a": deep, "when": datetime(2026, 1, 2, tzinfo=UTC), "id": uuid.UUID(int=7)})
    assert out.startswith(b'{"a":' + b"[" * 2999 + b"1" + b"]" * 2999)
    assert out.endswith(b',"when":"2026-01-02T00:00:00Z","id":"00000000-0000-0000-0000-000000000007"}')


def test_deep_values_inside_models_render() -> None:
    class Out(BaseModel):
        payload: object

    assert json.loads(jsonio.dumps(Out(payload=nested(400)))) == {"payload": nested(400)}


def test_stored_text_too_deep_to_parse_is_spliced_back_verbatim() -> None:
    text = "[" * 5000 + "]" * 5000
    value = jsonio.loads_stored(text)
    assert isinstance(value, RawJSON)
    assert jsonio.dumps({"payload": value, "n": 1}) == ('{"payload":' + text + ',"n":1}').encode()
    assert jsonio.loads_stored('{"a": [1]}') == {"a": [1]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_iterative_encoder_writes_what_json_dumps_writes(value: object) -> None:
    fast = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert "".join(jsonio._iter_encode(value, jsonio._shallow)) == fast
