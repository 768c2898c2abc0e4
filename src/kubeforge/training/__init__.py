"""kubeforge training."""
