"""The local workload runner: the kubelet and workload controllers of the local runtime.

The local control plane has no nodes, so this process watches kubeforge's own Jobs and
Deployments (label ``app.kubernetes.io/managed-by: kubeforge-operator``) and runs their
pod templates as local processes, reporting back through Job and Deployment status and
EndpointSlices as a kubelet and the controllers would. See docs/local-runtime.md.
"""

from .loop import Runner, stop_workloads

__all__ = ["Runner", "stop_workloads"]
