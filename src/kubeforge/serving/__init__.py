"""kubeforge serving."""
