"""The kubeforge API (group kubeforge.dev, version v1alpha1): the single source of truth.

The CRDs under crds/ are generated from these models (``make crds``). This package
imports nothing but pydantic (and yaml for rendering), so any layer may depend on it.
"""

from .featureview import FeatureView, FeatureViewSpec, FeatureViewStatus
from .meta import API_VERSION, GROUP, VERSION, Condition, ObjectMeta, Resource
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus
from .validation import KINDS, InvalidResource, field_path, parse

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "FeatureView",
    "FeatureViewSpec",
    "FeatureViewStatus",
    "InvalidResource",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ObjectMeta",
    "Resource",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "field_path",
    "parse",
]
