"""The settings.json transform: a pure function from (bytes, mode) to the bytes to write.

Everything but the `apiKeyHelper` member is preserved byte for byte: key order,
values, unicode as written, indentation and the final newline. The text is
validated with `json` first and then edited as text, so a file sbx cannot parse
is never rewritten (unless forced, and then only after a backup).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from sandboxwrap.errors import SettingsError

HELPER_KEY = "apiKeyHelper"
PLUGIN_HELPER = "echo proxy-managed"
"""The placeholder the plugin seeds; the host-side proxy swaps it for the real key."""

_BOM = "\ufeff"
_WS = " \t\n\r"


@dataclass(frozen=True)
class Change:
    """What the transform decided for one settings.json.

    `data` is the new content, or None when the file must stay as it is.
    `action` is one of: "kept" (the helper is present and stays), "absent"
    (nothing to remove), "removed", "inserted", "replaced" (a user's helper
    swapped for the plugin's with --force), "left-user-helper" (a user's own
    helper was left alone), "reset" (an unparseable file replaced with --force).
    """

    action: str
    data: bytes | None
    warnings: tuple[str, ...] = field(default=())
    helper_before: str | None = None

    @property
    def writes(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class _Member:
    key: str
    start: int  # index of the key's opening quote
    end: int  # index just past the value
    value_start: int


def transform(
    data: bytes | None,
    mode: str,
    *,
    force: bool = False,
    where: str = "settings.json",
) -> Change:
    """Return the change that makes `data` (None = no file) right for auth `mode`.

    api-key: the plugin's helper must be present; oauth / none: no helper.
    A helper other than the plugin's is the user's own: left in place with a
    warning unless `force`. Invalid JSON or a non-object raises SettingsError
    unless `force`, which resets the file to the minimal right content.
    """
    if mode not in ("api-key", "oauth", "none"):
        raise ValueError(f"unknown auth mode {mode!r}")
    want_helper = mode == "api-key"

    if data is None:
        if not want_helper:
            return Change("absent", None)
        return Change("inserted", _fresh(want_helper))

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _unparseable(f"{where} is not valid UTF-8 (byte {exc.start})", want_helper, force)

    bom = ""
    if text.startswith(_BOM):
        bom, text = _BOM, text[1:]
    if not text.strip(_WS):
        # Claude Code reads an empty file as {}.
        if not want_helper:
            return Change("absent", None)
        return Change("inserted", (bom + _fresh_text(want_helper)).encode())

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        why = f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return _unparseable(why, want_helper, force)
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        return _unparseable(f"{where} holds {kind}, not a JSON object", want_helper, force)

    members = _members(text)
    helpers = [m for m in members if m.key == HELPER_KEY]
    current = value.get(HELPER_KEY) if helpers else None
    shown = _describe(current) if helpers else None

    if helpers and current != PLUGIN_HELPER:
        # json.loads keeps the last duplicate, as Claude Code's JSON.parse does.
        if not force:
            effect = "" if want_helper else " (it still switches subscription login off)"
            warning = (
                f"{where} has apiKeyHelper = {shown}, which is not the plugin's "
                f"'{PLUGIN_HELPER}'; left it in place{effect}. Use --force to "
                + ("replace" if want_helper else "remove")
                + " it."
            )
            return Change("left-user-helper", None, (warning,), shown)
        edited = _remove(text, members, helpers)
        if want_helper:
            edited = _insert(edited)
            return Change("replaced", (bom + edited).encode(), (), shown)
        return Change("removed", (bom + edited).encode(), (), shown)

    if want_helper:
        if helpers:
            return Change("kept", None, (), shown)
        return Change("inserted", (bom + _insert(text)).encode(), (), None)
    if not helpers:
        return Change("absent", None)
    return Change("removed", (bom + _remove(text, members, helpers)).encode(), (), shown)


def helper_of(data: bytes) -> str | None:
    """Return a short description of the apiKeyHelper in a settings layer, or None.

    Layers that cannot be parsed are ignored here, as Claude Code ignores them.
    """
    try:
        value = json.loads(data.decode("utf-8").lstrip(_BOM) or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(value, dict) and HELPER_KEY in value:
        return _describe(value[HELPER_KEY])
    return None


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    # A user's helper could embed a key (`echo sk-ant-…`): show its shape only.
    if re.search(r"sk-ant-|[A-Za-z0-9_\-]{32,}", text):
        return "<a command that embeds a secret-like value>"
    return text if len(text) <= 60 else text[:57] + "…"


def _unparseable(why: str, want_helper: bool, force: bool) -> Change:
    if not force:
        raise SettingsError(
            why,
            hint="fix the file (Claude Code ignores a file it cannot parse), "
            "or rerun with --force to back it up and replace it",
        )
    return Change("reset", _fresh(want_helper), (f"{why}; replaced it (--force)",))


def _fresh_text(want_helper: bool) -> str:
    return f'{{\n  "{HELPER_KEY}": "{PLUGIN_HELPER}"\n}}\n' if want_helper else "{}\n"


def _fresh(want_helper: bool) -> bytes:
    return _fresh_text(want_helper).encode()


# --- a scanner for the members of the top-level object of already-valid JSON ---


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _skip_string(text: str, i: int) -> int:
    """Return the index just past the string literal starting at text[i] == '"'."""
    i += 1
    while True:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1


def _skip_value(text: str, i: int) -> int:
    c = text[i]
    if c == '"':
        return _skip_string(text, i)
    if c in "{[":
        depth = 0
        while True:
            c = text[i]
            if c == '"':
                i = _skip_string(text, i)
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    while i < len(text) and text[i] not in _WS + ",}]":
        i += 1
    return i


def _members(text: str) -> list[_Member]:
    i = _skip_ws(text, 0)
    assert text[i] == "{"  # validated by json.loads first
    i = _skip_ws(text, i + 1)
    out: list[_Member] = []
    while text[i] != "}":
        start = i
        key_end = _skip_string(text, i)
        key = json.loads(text[start:key_end])
        i = _skip_ws(text, key_end)  # at ':'
        value_start = _skip_ws(text, i + 1)
        end = _skip_value(text, value_start)
        out.append(_Member(key, start, end, value_start))
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return out


def _remove(text: str, members: list[_Member], doomed: list[_Member]) -> str:
    """Delete `doomed` members with their separating comma and the line they sat on."""
    # Work from the end so earlier offsets stay valid.
    for m in sorted(doomed, key=lambda m: m.start, reverse=True):
        idx = members.index(m)
        if idx + 1 < len(members):
            # Cut from this key up to the next key: takes the comma and the
            # next member's leading whitespace, which this member's own leading
            # whitespace then stands in for.
            cut_from, cut_to = m.start, members[idx + 1].start
        elif idx > 0:
            # Last member: cut from the end of the previous value, which takes
            # the comma before this member.
            cut_from, cut_to = members[idx - 1].end, m.end
        else:
            # The only member: leave an empty object, keeping the outer layout.
            open_brace = text.rindex("{", 0, m.start)
            close_brace = _skip_ws(text, m.end)
            text = text[: open_brace + 1] + text[close_brace:]
            members = [x for x in members if x is not m]
            continue
        text = text[:cut_from] + text[cut_to:]
        shift = cut_to - cut_from
        members = [
            x
            if x.start < cut_from
            else _Member(x.key, x.start - shift, x.end - shift, x.value_start - shift)
            for x in members
            if x is not m
        ]
    return text


def _insert(text: str) -> str:
    """Append the plugin's helper as the last member, in the file's own style."""
    members = _members(text)
    value = json.dumps(PLUGIN_HELPER)
    key = json.dumps(HELPER_KEY)
    if not members:
        open_brace = text.index("{")
        close_brace = _skip_ws(text, open_brace + 1)
        inner = text[open_brace + 1 : close_brace]
        if "\n" in inner or "\n" in text[close_brace:].rstrip(_WS) or text.count("\n") > 1:
            return f"{text[: open_brace + 1]}\n  {key}: {value}\n{text[close_brace:]}"
        return f"{text[: open_brace + 1]}{key}: {value}{text[close_brace:]}"
    last = members[-1]
    # Copy the separator between the previous key and its value (`": "` vs `":"`).
    sep = text[text.index(":", _skip_string(text, last.start)) : last.value_start]
    # Copy the whitespace that precedes the last member (newline + indent, or a space).
    prefix_start = last.start
    while prefix_start > 0 and text[prefix_start - 1] in _WS:
        prefix_start -= 1
    lead = text[prefix_start : last.start]
    between = lead
    if len(members) < 2 and "\n" not in lead:
        # One member on one line: a space after the comma only if the file uses ": ".
        between = " " if sep.endswith(" ") else ""
    return f"{text[: last.end]},{between}{key}{sep}{value}{text[last.end :]}"
