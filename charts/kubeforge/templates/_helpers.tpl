{{/* Chart name, truncated to a DNS label. */}}
{{- define "kubeforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the operator's objects: <release>-kubeforge, or the release name when it holds the chart's. */}}
{{- define "kubeforge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubeforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubeforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubeforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeforge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubeforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* <registry>/<repository>:<tag>; the tag defaults to the chart's appVersion. Call with (list $ "operator" "suffix"). */}}
{{- define "kubeforge.image" -}}
{{- $root := index . 0 }}
{{- $image := index $root.Values.images (index . 1) }}
{{- $suffix := "" }}
{{- if gt (len .) 2 }}{{ $suffix = index . 2 }}{{ end }}
{{- printf "%s/%s:%s%s" $root.Values.images.registry $image.repository (default $root.Chart.AppVersion $root.Values.images.tag) $suffix }}
{{- end }}

{{- define "kubeforge.trainerImage" -}}
{{- if .Values.images.trainer.cuda }}
{{- include "kubeforge.image" (list . "trainer" .Values.images.trainer.cudaTagSuffix) }}
{{- else }}
{{- include "kubeforge.image" (list . "trainer") }}
{{- end }}
{{- end }}

{{- define "kubeforge.featureClaim" -}}
{{- default (printf "%s-features" (include "kubeforge.fullname" .)) .Values.featureStore.persistence.existingClaim }}
{{- end }}

{{/*
The operators' permissions: exactly what their code calls (src/kubeforge/operators/permissions.py lists the same
pairs with the call that needs each, and a test compares the two). Namespaced resources only; the cluster-scoped
CustomResourceDefinition watch is in rbac.yaml.
*/}}
{{- define "kubeforge.operatorRules" -}}
# kopf watches the three kinds, keeps its progress and finalizers in their annotations (patch); the operators
# read them, write their status, and a ModelDeployment's spec.retrain creates TrainingJobs.
- apiGroups: [kubeforge.dev]
  resources: [trainingjobs]
  verbs: [get, list, watch, patch, create]
- apiGroups: [kubeforge.dev]
  resources: [modeldeployments, featureviews]
  verbs: [get, list, watch, patch]
- apiGroups: [kubeforge.dev]
  resources: [trainingjobs/status, modeldeployments/status, featureviews/status]
  verbs: [patch]
# Events on transitions (kubectl describe).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Why pods fail (training attempts, Tritons, gateways; a deployment's pods are watched) and
# materialization results: read only.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Children, written by server-side apply after a read; leftovers of a deleted owner are deleted.
# Jobs: training attempts and materializations (watched for their completion).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# ConfigMaps (training plans, gateway route tables) and Services (trainer rendezvous, Triton, gateway).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, create, patch, delete]
# Triton and gateway Deployments (watched for readiness).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, create, patch, delete]
# Triton and gateway addresses (watched).
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
# A ModelDeployment's own alert rules, where the Prometheus Operator's CRDs are installed.
- apiGroups: [monitoring.coreos.com]
  resources: [prometheusrules]
  verbs: [get, list, create, patch, delete]
{{- end }}
