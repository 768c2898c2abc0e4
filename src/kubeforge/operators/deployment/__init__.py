"""The ModelDeployment operator: Triton per live version, a gateway, and metric-gated rollouts."""
