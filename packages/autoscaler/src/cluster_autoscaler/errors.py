"""The autoscaler's errors: each says what is wrong and what to do."""

from __future__ import annotations

from cluster.errors import ConfigError


class ClusterConfigError(ConfigError):
    """A cluster config (YAML) that cannot be used; the message names the key and the line."""


class InvalidField(ClusterConfigError):
    """A config value's ``field`` (a dotted path inside its type) breaks a rule of its type."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message
