"""kubeforge featurestore."""
