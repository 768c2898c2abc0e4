"""kubeforge monitoring: drift of served model versions against their training baseline."""
