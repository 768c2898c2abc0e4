"""kubeforge: a Kubernetes-native ML platform (training, serving with canary/shadow rollouts, features)."""

__version__ = "0.1.0"
