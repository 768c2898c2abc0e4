"""The local runtime: a real control plane and kubeforge's workloads as local processes, no cluster needed."""
