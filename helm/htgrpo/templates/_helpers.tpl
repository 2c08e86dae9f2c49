{{/* Names and labels, as scaffolded by `helm create`. */}}
{{- define "htgrpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "htgrpo.fullname" -}}
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

{{- define "htgrpo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "htgrpo.labels" -}}
helm.sh/chart: {{ include "htgrpo.chart" . }}
{{ include "htgrpo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: htgrpo
{{- end }}

{{- define "htgrpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "htgrpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The submitter's service account. */}}
{{- define "htgrpo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-submitter" (include "htgrpo.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace runs are created in (the KFP profile namespace in multi-user mode). */}}
{{- define "htgrpo.kfpNamespace" -}}
{{- default .Release.Namespace .Values.kfp.namespace }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned. */}}
{{- define "htgrpo.imageRef" -}}
{{- $img := .image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .appVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "htgrpo.image" -}}
{{- include "htgrpo.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The MLflow server's image: its own when set, else the chart's (CPU) image, which has mlflow installed. */}}
{{- define "htgrpo.mlflowImage" -}}
{{- if .Values.mlflow.image.repository }}
{{- include "htgrpo.imageRef" (dict "image" .Values.mlflow.image "appVersion" .Chart.AppVersion) }}
{{- else }}
{{- include "htgrpo.image" . }}
{{- end }}
{{- end }}

{{- define "htgrpo.mlflowName" -}}
{{- printf "%s-mlflow" (include "htgrpo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "htgrpo.mlflowServiceAccountName" -}}
{{- default (include "htgrpo.mlflowName" .) .Values.mlflow.serviceAccount.name }}
{{- end }}

{{/* Host names the MLflow Service answers to, each with and without :port (MLflow checks the Host header). */}}
{{- define "htgrpo.mlflowAllowedHosts" -}}
{{- $svc := include "htgrpo.mlflowName" . }}
{{- $port := toString .Values.mlflow.service.port }}
{{- $hosts := list }}
{{- range $h := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) "localhost" "127.0.0.1" }}
{{- $hosts = append $hosts $h }}
{{- $hosts = append $hosts (printf "%s:%s" $h $port) }}
{{- end }}
{{- range .Values.mlflow.allowedHosts }}
{{- $hosts = append $hosts . }}
{{- end }}
{{- join "," (uniq $hosts) }}
{{- end }}

{{/* The pipeline's tracking_uri: the value given, else the chart's MLflow Service when it is enabled. */}}
{{- define "htgrpo.params" -}}
{{- $params := deepCopy .Values.pipeline.params }}
{{- if and .Values.mlflow.enabled (not $params.tracking_uri) }}
{{- $_ := set $params "tracking_uri" (printf "http://%s.%s.svc.cluster.local:%v" (include "htgrpo.mlflowName" .) .Release.Namespace .Values.mlflow.service.port) }}
{{- end }}
{{- toJson $params }}
{{- end }}

{{/* Container security context shared by every container: non-root, read-only root filesystem, no privileges. */}}
{{- define "htgrpo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "htgrpo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
