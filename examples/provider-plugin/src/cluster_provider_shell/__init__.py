"""cluster-provider-shell: an example third-party node provider for cluster's autoscaler.

Provider type ``shell`` (see :mod:`cluster_provider_shell.provider`), made by the
``cluster_make_provider`` hook in :mod:`cluster_provider_shell.plugin`, which the
``cluster.plugins`` entry point ``shell`` names.

Kept free of imports: every cluster process loads its plugins, and most never need a provider.
"""
