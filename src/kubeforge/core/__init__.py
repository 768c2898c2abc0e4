"""Shared plumbing for operators and components: Kubernetes client helpers, conditions, settings."""
