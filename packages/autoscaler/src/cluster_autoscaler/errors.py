"""The autoscaler's errors: each says what is wrong and what to do."""

from __future__ import annotations

from cluster.errors import ConfigError


class ClusterConfigError(ConfigError):
    """A cluster config (YAML) that cannot be used; the message names the key and the line."""
