"""cluster on Kubernetes: Kubernetes runs the pods, cluster runs inside them.

- ``manifests``: the head's Deployment, Service, RBAC and Secret, and worker pods, rendered
  from a cluster config (``cluster k8s manifests CONFIG``);
- ``provider``: provider type ``kubernetes``, worker nodes as pods, for the autoscaler;
- ``up``: ``cluster up/down CONFIG`` for it;
- ``kube``: reaching the API with the official client.
"""
