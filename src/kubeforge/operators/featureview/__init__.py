"""The FeatureView operator: FeatureView -> Feast registry entries + one batch/v1 Job per materialization run."""
