"""sandboxwrap: a drop-in `docker sandbox run` that fixes Claude's apiKeyHelper for your login."""

__version__ = "0.1.0"
