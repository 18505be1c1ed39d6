"""Reading `docker sandbox run` arguments the way the plugin does (without changing them)."""

from __future__ import annotations

import os

import pytest

from sandboxwrap.errors import SandboxError
from sandboxwrap.plugin import default_name, parse_ls_json, parse_run_args


def test_agent_and_workspace(tmp_path: os.PathLike[str]) -> None:
    req = parse_run_args(["claude", str(tmp_path)])
    assert req.agent == "claude"
    assert req.sandbox is None
    assert req.workspace == str(tmp_path)
    assert req.sandbox_name() == f"claude-{os.path.basename(tmp_path)}"


def test_workspace_defaults_to_current_directory(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    req = parse_run_args(["claude"])
    assert req.workspace == str(tmp_path)
    assert req.sandbox_name() == f"claude-{tmp_path.name}"


def test_relative_workspace_and_extras() -> None:
    req = parse_run_args(["claude", "proj", "../docs:ro", "/data"])
    assert req.workspace == os.path.abspath("proj")
    assert req.workspaces == ("proj", "../docs:ro", "/data")
    assert req.sandbox_name() == "claude-proj"


def test_existing_sandbox_name_with_agent_args() -> None:
    req = parse_run_args(["claude-proj", "--", "-p", "hi", "--name", "x"])
    assert req.sandbox == "claude-proj"
    assert req.agent is None
    assert req.agent_args == ("-p", "hi", "--name", "x")
    assert req.name is None  # after `--` nothing is an option
    assert req.sandbox_name() == "claude-proj"


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "mybox", "claude", "."],
        ["--name=mybox", "claude", "."],
        ["claude", "--name", "mybox", "."],
        ["claude", ".", "--name", "mybox"],
    ],
)
def test_name_option_anywhere_before_dashdash(args: list[str]) -> None:
    req = parse_run_args(args)
    assert req.sandbox_name() == "mybox"
    assert req.workspaces == (".",)


@pytest.mark.parametrize(
    ("args", "template"),
    [
        (["-t", "img:1", "claude"], "img:1"),
        (["--template", "img:1", "claude"], "img:1"),
        (["--template=img:1", "claude"], "img:1"),
        (["-timg:1", "claude"], "img:1"),
        (["-t=img:1", "claude"], "img:1"),
    ],
)
def test_template_forms(args: list[str], template: str) -> None:
    req = parse_run_args(args)
    assert req.template == template
    assert req.agent == "claude"


def test_flags() -> None:
    req = parse_run_args(
        ["-D", "--load-local-template", "--pull-template", "never", "-d", "claude", "ws"]
    )
    assert req.debug
    assert req.load_local_template
    assert req.detached
    assert req.pull_template == "never"
    assert req.workspaces == ("ws",)
    assert parse_run_args(["-dD", "claude"]).detached


def test_unknown_options_are_recorded_not_swallowed() -> None:
    req = parse_run_args(["--future-flag", "--other=1", "claude", "ws"])
    assert req.unknown_options == ("--future-flag", "--other=1")
    assert req.agent == "claude"
    assert req.workspaces == ("ws",)


@pytest.mark.parametrize("agent", ["codex", "gemini", "cagent", "kiro", "copilot", "shell"])
def test_other_agents(agent: str) -> None:
    assert parse_run_args([agent, "."]).agent == agent


def test_nothing() -> None:
    req = parse_run_args([])
    assert req.agent is None
    assert req.sandbox is None
    assert req.sandbox_name() is None


def test_default_name_uses_basename_verbatim() -> None:
    assert default_name("claude", "/home/u/my-project") == "claude-my-project"
    assert default_name("claude", "/home/u/foo.bar/") == "claude-foo.bar"


def test_ls_json_shapes() -> None:
    full = (
        '{"vms":[{"name":"claude-a","agent":"claude","status":"running",'
        '"socket_path":"/x","sandbox_count":1,"workspaces":["/w/a"]},'
        '{"name":"claude-b","agent":"claude","status":"stopped"}]}'
    )
    boxes = parse_ls_json(full)
    assert [b.name for b in boxes] == ["claude-a", "claude-b"]
    assert boxes[0].workspaces == ("/w/a",)
    assert boxes[1].workspaces == ()
    assert parse_ls_json('{"sandboxes":[]}') == []
    assert parse_ls_json("") == []
    with pytest.raises(SandboxError):
        parse_ls_json("NAME  STATUS\n")
