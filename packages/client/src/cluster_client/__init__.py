"""cluster jobs: submit whole programs to a cluster and follow them.

    from cluster_client import JobSubmissionClient
    client = JobSubmissionClient("http://127.0.0.1:8265", token=...)
    job_id = client.submit_job(entrypoint="python script.py", runtime_env={"env_vars": {"N": "3"}})
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobDetails", "JobStatus", "JobSubmissionClient", "JobSubmissionError"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'cluster_client' has no attribute {name!r}")
    # The SDK (and httpx) load on first use: every daemon imports this package for its plugin
    # hooks, and none of them needs an HTTP client.
    from cluster_client import sdk

    return getattr(sdk, name)
