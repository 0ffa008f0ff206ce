"""``cluster.util.joblib``: a joblib backend that runs on the cluster (Ray's ``ray.util.joblib``).

    import joblib
    from cluster.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):      # or "cluster"
        print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(10)))

joblib is optional: it is imported when a backend is registered, not with this module.
"""

from __future__ import annotations

__all__ = ["register_cluster", "register_ray"]

NAMES = ("ray", "cluster")


def register_ray() -> None:
    """Register the cluster's joblib backend under the names "ray" and "cluster"."""
    try:
        from joblib import register_parallel_backend
    except ImportError:
        raise ImportError("the joblib backend needs joblib: pip install joblib") from None
    # Needs joblib (just found), so it waits until a backend is registered.
    from cluster.util.joblib.backend import ClusterBackend

    for name in NAMES:
        register_parallel_backend(name, ClusterBackend)


def register_cluster() -> None:
    """:func:`register_ray`, under our own name."""
    register_ray()
