"""kubeforge operators."""
