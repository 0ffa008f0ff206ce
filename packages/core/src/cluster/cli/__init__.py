"""The ``cluster`` command line (click): core's commands, plus those plugins add.

Owns: how commands talk to a user (progress, errors in words, exit codes). At the top of the
package: may import anything of cluster. The console script is ``cluster.cli:main``.
"""

from cluster.cli.commands import main

__all__ = ["main"]
