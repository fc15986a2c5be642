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
generates there (auth.generatePassword=false refuses instead).
*/}}
{{- define "redis.password" -}}
{{- if .Values.auth.password }}
{{- .Values.auth.password }}
{{- else if not .Values.auth.generatePassword }}
{{- fail "redis.auth.generatePassword is false: set redis.auth.existingSecret (or redis.auth.password)" }}
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

{{/* The image reference: repository:tag, or repository:tag@digest when a digest is set. */}}
{{- define "redis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository .Values.image.tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Bytes of a size with a unit: (include "redis.bytes" (list "256Mi" $units)). */}}
{{- define "redis.bytes" -}}
{{- $size := toString (index . 0) }}
{{- $units := index . 1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $size }}
{{- $unit := trimPrefix $number $size }}
{{- if or (not $number) (not (hasKey $units $unit)) }}
{{- fail (printf "cannot read the size %q (units: %s)" $size (keys $units | sortAlpha | join ", ")) }}
{{- end }}
{{- mulf (float64 $number) (get $units $unit) | floor | printf "%.0f" }}
{{- end }}

{{/* Units of a Kubernetes memory quantity, and of a redis.conf size (case-insensitive there). */}}
{{- define "redis.quantityUnits" -}}
{{- dict "" 1 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 | toJson }}
{{- end }}

{{- define "redis.confUnits" -}}
{{- dict "" 1 "k" 1e3 "kb" 1024 "m" 1e6 "mb" 1048576 "g" 1e9 "gb" 1073741824 | toJson }}
{{- end }}

{{/*
The maxmemory line's value: config.maxmemory, or 60% of the memory limit in whole megabytes;
empty when there is neither. Fails when it is not below the container's memory limit.
*/}}
{{- define "redis.maxmemory" -}}
{{- $limit := dig "limits" "memory" "" .Values.resources }}
{{- $limitBytes := 0.0 }}
{{- if $limit }}
{{- $limitBytes = include "redis.bytes" (list $limit (include "redis.quantityUnits" . | fromJson)) | float64 }}
{{- end }}
{{- $maxmemory := .Values.config.maxmemory }}
{{- if $maxmemory }}
{{- $bytes := include "redis.bytes" (list (lower $maxmemory) (include "redis.confUnits" . | fromJson)) | float64 }}
{{- if and $limit (ge $bytes $limitBytes) }}
{{- fail (printf "redis.config.maxmemory (%s) must be below redis.resources.limits.memory (%s), with room for the AOF rewrite" $maxmemory $limit) }}
{{- end }}
{{- $maxmemory }}
{{- else if $limit }}
{{- printf "%.0fmb" (divf (mulf $limitBytes 0.6) 1048576 | floor) }}
{{- end }}
{{- end }}
