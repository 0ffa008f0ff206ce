"""The public home of cluster's exceptions (Ray's spelling: ``cluster.exceptions``)."""

from cluster.errors import *  # noqa: F403
from cluster.errors import __all__ as __all__
