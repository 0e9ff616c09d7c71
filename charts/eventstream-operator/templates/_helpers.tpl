{{/* Chart name, truncated to a DNS label. */}}
{{- define "eventstream-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "eventstream-operator.fullname" -}}
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

{{- define "eventstream-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (never change: Deployment selectors are immutable). */}}
{{- define "eventstream-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eventstream-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "eventstream-operator.labels" -}}
helm.sh/chart: {{ include "eventstream-operator.chart" . }}
{{ include "eventstream-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eventstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of RBAC objects outside the release namespace (the cluster-wide ClusterRole and
ClusterRoleBinding, the Role in the watched namespace): the full name alone is the same for two
releases of one name in different namespaces, and the second install would fail on (or take
over) the first one's objects. Not truncated: RBAC names are not limited to 63 characters, and
cutting could make two names equal again. */}}
{{- define "eventstream-operator.rbacName" -}}
{{- printf "%s-%s" .Release.Namespace (include "eventstream-operator.fullname" .) }}
{{- end }}

{{- define "eventstream-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eventstream-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] of one image block, falling back to the operator image. */}}
{{- define "eventstream-operator.imageRef" -}}
{{- $img := .image -}}
{{- $base := .root.Values.image -}}
{{- $repo := default $base.repository $img.repository -}}
{{- $tag := default (default .root.Chart.AppVersion $base.tag) $img.tag -}}
{{- $digest := $img.digest -}}
{{- if and (not $img.repository) (not $img.tag) (not $digest) }}{{ $digest = $base.digest }}{{ end -}}
{{- if $digest }}{{ printf "%s@%s" $repo $digest }}{{ else }}{{ printf "%s:%s" $repo $tag }}{{ end -}}
{{- end }}

{{- define "eventstream-operator.image" -}}
{{- include "eventstream-operator.imageRef" (dict "image" .Values.image "root" .) }}
{{- end }}

{{- define "eventstream-operator.dataplaneImage" -}}
{{- include "eventstream-operator.imageRef" (dict "image" .Values.dataplane.image "root" .) }}
{{- end }}

{{/* "true" when leader election is on: `auto` means replicaCount > 1. */}}
{{- define "eventstream-operator.leaderElection" -}}
{{- $le := .Values.leaderElection.enabled -}}
{{- if eq (toString $le) "auto" }}{{ if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- else if $le }}true
{{- end }}
{{- end }}

{{- define "eventstream-operator.leaseName" -}}
{{- default (include "eventstream-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The metrics Service's name; also the `job` label Prometheus gives the operator's series. */}}
{{- define "eventstream-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "eventstream-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
