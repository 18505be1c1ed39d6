"""The settings.json transform: exact bytes in, exact bytes out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxwrap.errors import SettingsError
from sandboxwrap.settings import PLUGIN_HELPER, helper_of, transform

SEED = (
    b'{"themeId":1,"alwaysThinkingEnabled":true,"apiKeyHelper":"echo proxy-managed",'
    b'"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)
SEED_WITHOUT = (
    b'{"themeId":1,"alwaysThinkingEnabled":true,'
    b'"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)


def test_plugin_seed_loses_only_the_helper_for_oauth() -> None:
    change = transform(SEED, "oauth")
    assert change.action == "removed"
    assert change.data == SEED_WITHOUT


@pytest.mark.parametrize("mode", ["oauth", "none"])
def test_nothing_to_write_when_already_right(mode: str) -> None:
    change = transform(SEED_WITHOUT, mode)
    assert change.action == "absent"
    assert change.data is None


def test_api_key_keeps_the_seed_untouched() -> None:
    change = transform(SEED, "api-key")
    assert (change.action, change.data) == ("kept", None)


def test_api_key_inserts_in_the_files_own_compact_style() -> None:
    change = transform(SEED_WITHOUT, "api-key")
    assert change.action == "inserted"
    assert change.data == SEED_WITHOUT[:-1] + b',"apiKeyHelper":"echo proxy-managed"}'


def test_missing_file() -> None:
    assert transform(None, "oauth").data is None
    created = transform(None, "api-key")
    assert created.action == "inserted"
    assert json.loads(created.data or b"") == {"apiKeyHelper": PLUGIN_HELPER}


@pytest.mark.parametrize("empty", [b"", b"\n", b"  \n\t"])
def test_empty_file_counts_as_empty_object(empty: bytes) -> None:
    assert transform(empty, "none").data is None
    assert json.loads(transform(empty, "api-key").data or b"") == {"apiKeyHelper": PLUGIN_HELPER}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b'{"a": 1,}', "line 1, column 9"),
        (b'{\n  // comment\n  "apiKeyHelper": "echo proxy-managed"\n}', "line 2, column 3"),
        (b'{"apiKeyHelper": "echo proxy-man', "line 1, column 18"),
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"null", "null"),
        (b"3", "a number"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
@pytest.mark.parametrize("mode", ["api-key", "oauth", "none"])
def test_unparseable_is_refused_with_its_position(text: bytes, where: str, mode: str) -> None:
    with pytest.raises(SettingsError) as info:
        transform(text, mode, where="~/.claude/settings.json in sandbox claude-x")
    assert where in info.value.message
    assert "~/.claude/settings.json in sandbox claude-x" in info.value.message
    assert "--force" in (info.value.hint or "")


def test_force_resets_unparseable_file() -> None:
    change = transform(b'{"a": 1,}', "oauth", force=True)
    assert change.action == "reset"
    assert json.loads(change.data or b"") == {}
    change = transform(b'{"a": 1,}', "api-key", force=True)
    assert json.loads(change.data or b"") == {"apiKeyHelper": PLUGIN_HELPER}


@pytest.mark.parametrize("mode", ["api-key", "oauth", "none"])
def test_users_own_helper_is_left_with_a_warning(mode: str) -> None:
    text = b'{"apiKeyHelper": "~/bin/get-key.sh", "x": 1}'
    change = transform(text, mode)
    assert change.action == "left-user-helper"
    assert change.data is None
    assert "~/bin/get-key.sh" in change.warnings[0]
    assert "--force" in change.warnings[0]


def test_force_replaces_or_removes_users_helper() -> None:
    text = b'{"apiKeyHelper": "~/bin/get-key.sh", "x": 1}'
    assert transform(text, "oauth", force=True).data == b'{"x": 1}'
    replaced = transform(text, "api-key", force=True)
    assert replaced.action == "replaced"
    assert replaced.data == b'{"x": 1, "apiKeyHelper": "echo proxy-managed"}'


def test_secret_in_users_helper_is_not_echoed() -> None:
    change = transform(b'{"apiKeyHelper": "echo sk-ant-api03-SENTINELSECRET"}', "oauth")
    assert "SENTINELSECRET" not in " ".join(change.warnings)


def test_duplicate_helpers_are_all_removed() -> None:
    text = b'{"apiKeyHelper": "echo proxy-managed", "a": 1, "apiKeyHelper": "echo proxy-managed"}'
    assert transform(text, "oauth").data == b'{"a": 1}'


def test_escaped_key_is_recognised() -> None:
    text = b'{"a": 1, "api\\u004beyHelper": "echo proxy-managed"}'
    assert transform(text, "oauth").data == b'{"a": 1}'


def test_bom_unicode_and_final_newline_survive() -> None:
    text = '\ufeff{\n\t"name": "caf\u00e9 \\u00e9",\n\t"apiKeyHelper": "echo proxy-managed"\n}\n'
    out = transform(text.encode(), "oauth").data
    assert out == '\ufeff{\n\t"name": "caf\u00e9 \\u00e9"\n}\n'.encode()


def test_nested_strings_with_braces_do_not_confuse_the_scanner() -> None:
    text = b'{"a": {"b": "}{\\"]["}, "apiKeyHelper": "echo proxy-managed", "c": [1, "x,y"]}'
    out = transform(text, "oauth").data or b""
    assert out == b'{"a": {"b": "}{\\"]["}, "c": [1, "x,y"]}'


def test_helper_of_layers() -> None:
    assert helper_of(b'{"apiKeyHelper": "echo hi"}') == '"echo hi"'
    assert helper_of(b'{"a": 1}') is None
    assert helper_of(b"not json") is None
    assert helper_of(b"") is None


# --- properties: any object, any json.dumps style, exact bytes -------------------------

_keys = st.text(min_size=1, max_size=8).filter(lambda k: k != "apiKeyHelper")
_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
_values = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=6,
)
_styles = st.sampled_from(
    [
        {"indent": None, "separators": (",", ":")},
        {"indent": None},
        {"indent": 2},
        {"indent": 4},
        {"indent": "\t"},
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_keys, _values, min_size=1, max_size=6),
    st.integers(min_value=0, max_value=6),
    _styles,
    st.booleans(),
    st.sampled_from(["", "\n"]),
)
def test_removal_is_exactly_the_same_file_without_the_helper(
    others: dict[str, object], pos: int, style: dict[str, object], ascii_: bool, tail: str
) -> None:
    items = list(others.items())
    with_helper = dict([*items[:pos], ("apiKeyHelper", PLUGIN_HELPER), *items[pos:]])
    before = json.dumps(with_helper, ensure_ascii=ascii_, **style) + tail  # type: ignore[arg-type]
    expect = json.dumps(others, ensure_ascii=ascii_, **style) + tail  # type: ignore[arg-type]
    change = transform(before.encode(), "oauth")
    assert change.data == expect.encode()
    # Idempotent: a second pass writes nothing.
    assert transform(change.data or b"", "oauth").data is None


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_keys, _values, min_size=1, max_size=6),
    _styles,
    st.booleans(),
    st.sampled_from(["", "\n"]),
)
def test_insertion_appends_in_the_files_style(
    others: dict[str, object], style: dict[str, object], ascii_: bool, tail: str
) -> None:
    before = json.dumps(others, ensure_ascii=ascii_, **style) + tail  # type: ignore[arg-type]
    expect_obj = {**others, "apiKeyHelper": PLUGIN_HELPER}
    expect = json.dumps(expect_obj, ensure_ascii=ascii_, **style) + tail  # type: ignore[arg-type]
    change = transform(before.encode(), "api-key")
    assert change.data == expect.encode()
    assert transform(change.data or b"", "api-key").data is None
