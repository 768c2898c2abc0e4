"""The TrainingJob operator: TrainingJob -> ConfigMap (spec) + one batch/v1 Job per attempt."""
