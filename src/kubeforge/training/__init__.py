"""The trainer program that runs inside a TrainingJob's pods.

It reads the TrainingJob spec, loads the dataset, trains (under DistributedDataParallel
when the job has several replicas), checkpoints so a retried pod resumes, and registers
the result in MLflow as the model version described in :mod:`kubeforge.core.modelcontract`.
``main.main(argv)`` is the entry point.
"""
