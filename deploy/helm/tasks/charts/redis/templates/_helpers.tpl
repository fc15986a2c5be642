{{/* Names and labels of the redis subchart: every name and selector comes from here. */}}

{{- define "redis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-redis (or <release> if the release name already contains the chart name),
cut to 52 characters: it names the StatefulSet, whose pods carry the label
controller-revision-hash=<name>-<10-character hash>, and a label value has at most 63.
The parent chart mirrors this rule in "tasks.redis.fullname"; keep the two in step (tests check it).
*/}}
{{- define "redis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The StatefulSet's governing (headless) Service: <fullname>-headless, at most 61 characters. */}}
{{- define "redis.headlessName" -}}
{{- printf "%s-headless" (include "redis.fullname" .) }}
{{- end }}

{{- define "redis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* The Secret that holds the password: an existing one, or ours. */}}
{{- define "redis.secretName" -}}
{{- default (include "redis.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/*
The password of the Secret we create: the explicit value; else the one already in the cluster
(lookup), so upgrades and rollbacks keep it; else a new random one (first install).
Called once per render, from secret.yaml only. `helm template` cannot look up, so it always
generates there.
*/}}
{{- define "redis.password" -}}
{{- if .Values.auth.password }}
{{- .Values.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "redis.fullname" .) | default dict }}
{{- $current := dig "data" .Values.auth.existingSecretPasswordKey "" $existing }}
{{- if $current }}
{{- $current | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}
