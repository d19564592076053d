{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "kubegraft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
*/}}
{{- define "kubegraft.fullname" -}}
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

{{/*
Chart label value: <chart>-<version>.
*/}}
{{- define "kubegraft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "kubegraft.labels" -}}
helm.sh/chart: {{ include "kubegraft.chart" . }}
{{ include "kubegraft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubegraft
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "kubegraft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubegraft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's selector labels (the component label the trainer NetworkPolicy also selects on).
*/}}
{{- define "kubegraft.operatorSelectorLabels" -}}
{{ include "kubegraft.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's labels.
*/}}
{{- define "kubegraft.operatorLabels" -}}
{{ include "kubegraft.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "kubegraft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubegraft.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubegraft.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
Images: `repository@digest` when a digest is set (the tag is then ignored), else `repository:tag` with the tag
defaulting to the chart's appVersion.
*/}}
{{- define "kubegraft.operatorImage" -}}
{{- include "kubegraft.image" (dict "image" .Values.operator.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "kubegraft.trainerImage" -}}
{{- include "kubegraft.image" (dict "image" .Values.trainer.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the metrics Service (also the Prometheus `job` label of the operator's series).
*/}}
{{- define "kubegraft.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kubegraft.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespaces that get the training-pod NetworkPolicy.
*/}}
{{- define "kubegraft.trainerNamespaces" -}}
{{- if .Values.networkPolicy.trainerNamespaces }}
{{- toJson .Values.networkPolicy.trainerNamespaces }}
{{- else }}
{{- toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator handles. Used by the ClusterRole (all namespaces) or by
one Role per watched namespace. No Secrets: training pods read S3 credentials through secretKeyRef.
*/}}
{{- define "kubegraft.namespacedRules" -}}
# The custom resource: watched, annotated (kopf bookkeeping under kubegraft.io/), status written.
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs/status"]
  verbs: ["patch", "update"]
# One batch/v1 Job per run; suspend/resume is a patch; replaced runs are deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# Training pods: their progress endpoint, termination messages and failure reasons.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["get"]
# The spec ConfigMap mounted into each training pod.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
# The headless Service of a multi-worker run (spec.workers > 1): created once (409 = there), deleted with a
# replaced run; never read or watched.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "delete"]
# Events on TransferJobs (kopf posts them through either API); a pending run's Job Events are read for
# FailedCreate (e.g. a ResourceQuota refusing its pod).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "get", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# kopf peering: with 2+ replicas only one works, the others stand by.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
# Kueue Workloads of queued Jobs, read to explain Queued (optional: without it Queued is less detailed).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list"]
{{- end }}

{{/*
RBAC rules for cluster-scoped resources: kopf scans CRDs at startup to find the resources it serves.
*/}}
{{- define "kubegraft.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
RBAC rules of the TransferJob editor (aggregated into `edit` and `admin`): the resource, and its status to read.
The status is the operator's to write: users get no verbs on transferjobs/status beyond get.
*/}}
{{- define "kubegraft.editorRules" -}}
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs"]
  verbs: ["create", "update", "patch", "delete", "get", "list", "watch"]
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs/status"]
  verbs: ["get"]
{{- end }}

{{/*
RBAC rules of the TransferJob viewer (aggregated into `view`, hence also into `edit` and `admin`).
*/}}
{{- define "kubegraft.viewerRules" -}}
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubegraft.io"]
  resources: ["transferjobs/status"]
  verbs: ["get"]
{{- end }}
