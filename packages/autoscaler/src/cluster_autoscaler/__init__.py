"""cluster's autoscaler: grow and shrink a cluster through provider plugins.

The policy (``cluster_autoscaler.policy``) is pure code: observations in, a plan out. A head
service runs it against the cluster's pending demand and applies its plans through a
provider (``local``, ``fake``, or a plugin's), whose contract is ``cluster_autoscaler.provider``.
"""
