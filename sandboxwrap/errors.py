"""One exception hierarchy; `EXIT_CODES` is the only place that maps it to exit statuses."""

from __future__ import annotations


class SbxError(Exception):
    """A failure sbx reports to the user: what happened, where, and what to do."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status
        """The exit status of the docker command that failed, when one did."""


class UsageError(SbxError):
    """The command line asks for something sbx does not offer."""


class ConfigError(SbxError):
    """The config file or a setting's value is unusable."""


class DockerError(SbxError):
    """docker, or its `sandbox` plugin, is missing or of a kind sbx cannot drive."""


class SandboxError(SbxError):
    """A sandbox could not be listed, found or created."""


class ShellError(SbxError):
    """The shell inside the sandbox could not be started or driven."""


class SettingsError(SbxError):
    """settings.json is not something sbx may rewrite (not JSON, not an object)."""


class WriteError(SbxError):
    """settings.json could not be written, or did not read back as written."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while sbx was changing something; exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Statuses 64-78 follow sysexits.h in spirit and stay clear of what agents and
# docker itself return (0, 1, 125-127, 128+signal), so a wrapper script can tell
# "sbx refused" from "the agent failed".
EXIT_CODES: dict[type[SbxError], int] = {
    UsageError: 2,
    ConfigError: 78,
    DockerError: 69,
    SandboxError: 70,
    ShellError: 75,
    SettingsError: 65,
    WriteError: 74,
}
GENERIC_EXIT = 1


def exit_code_for(error: SbxError) -> int:
    """Return the documented exit status for `error`."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return GENERIC_EXIT
