"""cluster on Kubernetes: Kubernetes runs the pods, cluster runs inside them.

This step renders the head's manifests (``cluster k8s manifests CONFIG``); the provider that
runs nodes as pods comes next.
"""
