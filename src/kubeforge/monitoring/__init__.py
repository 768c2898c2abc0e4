"""kubeforge monitoring."""
