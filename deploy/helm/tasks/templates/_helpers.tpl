{{/* Names, labels and the shared pod/container pieces: every name and selector comes from here. */}}

{{- define "tasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
<fullname>: the release name if it contains the chart name (`helm install tasks` → tasks), unless
that is also the bundled Redis's name (a release called e.g. `tasks-redis`): then, as for any
other release, <release>-<chart>. So the app and Redis never share a name (tasks.checkNames
refuses the one way left, overrides that coincide).
*/}}
{{- define "tasks.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- $release := .Release.Name | trunc 63 | trimSuffix "-" }}
{{- if and (contains $name .Release.Name) (ne $release (include "tasks.redis.fullname" .)) }}
{{- $release }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
<fullname>-<part> in at most <max> characters, the fullname cut to make room:
(include "tasks.partName" (list . "migrate" 63)).
*/}}
{{- define "tasks.partName" -}}
{{- $ctx := index . 0 }}
{{- $part := index . 1 }}
{{- $room := sub (index . 2) (add1 (len $part)) }}
{{- printf "%s-%s" (include "tasks.fullname" $ctx | trunc (int $room) | trimSuffix "-") $part }}
{{- end }}

{{/* The cleanup CronJob: at most 52 characters (the Jobs it creates append an 11-character suffix). */}}
{{- define "tasks.cleanupName" -}}
{{- include "tasks.partName" (list . "cleanup" 52) }}
{{- end }}

{{/* The migrate hook Job: at most 63 characters (its name becomes its pods' job-name label). */}}
{{- define "tasks.migrateName" -}}
{{- include "tasks.partName" (list . "migrate" 63) }}
{{- end }}

{{/* The `helm test` pod: at most 63 characters (its hostname). */}}
{{- define "tasks.testName" -}}
{{- include "tasks.partName" (list . "test" 63) }}
{{- end }}

{{/* The Job NOTES.txt tells users to create from the CronJob: at most 61 characters. */}}
{{- define "tasks.manualJobName" -}}
{{- printf "%s-manual-1" (include "tasks.cleanupName" .) }}
{{- end }}

{{/*
Fails the render when two objects of one kind would share a name: the app's objects are
<fullname>, the bundled Redis's <redis fullname> and <redis fullname>-headless. Only overrides
can make them meet (tasks.fullname avoids it otherwise). Also when a name that names a Service
is no DNS label (Helm accepts release names such as "1st" or "a.b", Services do not).
*/}}
{{- define "tasks.checkNames" -}}
{{- $app := include "tasks.fullname" . }}
{{- $services := list $app }}
{{- if .Values.redis.enabled }}
{{- $redis := include "tasks.redis.fullname" . }}
{{- if has $app (list $redis (printf "%s-headless" $redis)) }}
{{- fail (printf "the app and the bundled Redis would both name objects %q: set fullnameOverride or redis.fullnameOverride so they differ" $app) }}
{{- end }}
{{- $services = append $services $redis }}
{{- end }}
{{- range $services }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "Service name %q must start with a letter and hold only letters, digits and dashes: use another release name, or set fullnameOverride and redis.fullnameOverride" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fails the render when /metrics would share a port with the API: the app refuses that config, and
a Service cannot carry one port twice.
*/}}
{{- define "tasks.checkPorts" -}}
{{- if eq (int .Values.metrics.port) (int .Values.containerPort) }}
{{- fail (printf "metrics.port (%v) must differ from containerPort: /metrics has a listener of its own" .Values.metrics.port) }}
{{- end }}
{{- if eq (int .Values.metrics.servicePort) (int .Values.service.port) }}
{{- fail (printf "metrics.servicePort (%v) must differ from service.port" .Values.metrics.servicePort) }}
{{- end }}
{{- end }}

{{- define "tasks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tasks.labels" -}}
helm.sh/chart: {{ include "tasks.chart" . }}
{{ include "tasks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "tasks.name" . }}
{{- end }}

{{/* Labels every pod of this release carries (API, jobs, test). */}}
{{- define "tasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tasks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The API pods: selector labels plus component=api, so the Service, HPA and PDB never select the
cleanup, migrate or test pods (they carry the same name/instance labels).
*/}}
{{- define "tasks.apiSelectorLabels" -}}
{{ include "tasks.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end }}

{{/* Label key of the pods allowed to reach Redis (API, cleanup, migrate): the Redis NetworkPolicy selects it. */}}
{{- define "tasks.redisClientLabelKey" -}}
{{- printf "%s-redis-client" (include "tasks.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{- define "tasks.redisClientLabel" -}}
{{ include "tasks.redisClientLabelKey" . }}: "true"
{{- end }}

{{/* The egress rule for DNS lookups: port 53, to networkPolicy.dnsTo or anywhere. */}}
{{- define "tasks.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "tasks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tasks.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The one image reference of the API, the cleanup CronJob, the migrate hook and the test (factor V). */}}
{{- define "tasks.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret loaded with envFrom: an existing one, or ours. */}}
{{- define "tasks.secretName" -}}
{{- default (include "tasks.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
The redis subchart's full name, by the subchart's own rule ("redis.fullname": <release>-redis,
at most 52 characters).
Mirrored here because the parent cannot render in the subchart's scope; tests check both agree.
*/}}
{{- define "tasks.redis.fullname" -}}
{{- if .Values.redis.fullnameOverride }}
{{- .Values.redis.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default "redis" .Values.redis.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Redis pods' selector labels, as the subchart sets them ("redis.selectorLabels"). */}}
{{- define "tasks.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ default "redis" .Values.redis.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* TASKS_REDIS_MODE: the bundled Redis is one node; an external one may be a cluster. */}}
{{- define "tasks.redis.mode" -}}
{{- if and .Values.redis.enabled (eq .Values.externalRedis.mode "cluster") }}
{{- fail "externalRedis.mode=cluster needs redis.enabled=false: the bundled Redis is a single node" }}
{{- end }}
{{- .Values.externalRedis.mode }}
{{- end }}

{{/* TASKS_REDIS_URL: the bundled Redis Service, or externalRedis.url (factor IV: only this changes). */}}
{{- define "tasks.redis.url" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:%v/0" (include "tasks.redis.fullname" .) (dig "service" "port" 6379 .Values.redis) }}
{{- else }}
{{- required "externalRedis.url is required when redis.enabled=false" .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/* TASKS_REDIS_USERNAME: externalRedis.username (an ACL user); the bundled Redis has only `default`. */}}
{{- define "tasks.redis.username" -}}
{{- if not .Values.redis.enabled }}
{{- .Values.externalRedis.username }}
{{- end }}
{{- end }}

{{/* Secret name and key of the Redis password, or empty when there is none. */}}
{{- define "tasks.redis.passwordSecret" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
{{- dict "name" (default (include "tasks.redis.fullname" .) .Values.redis.auth.existingSecret) "key" .Values.redis.auth.existingSecretPasswordKey | toJson }}
{{- end }}
{{- else if .Values.externalRedis.existingSecret }}
{{- dict "name" .Values.externalRedis.existingSecret "key" .Values.externalRedis.existingSecretPasswordKey | toJson }}
{{- end }}
{{- end }}

{{/*
The password reference of the bundled Redis as it runs now: the deployed StatefulSet's, found with
lookup on an upgrade. Redis restarts with a changed auth (turned on or off, another Secret or key)
only after the pre-upgrade hooks, so the migrate hook must still authenticate as before. Empty
when that Redis has no password; this revision's own reference when there is no deployed one
(install, external Redis, or `helm template`, which cannot look up).
*/}}
{{- define "tasks.redis.runningPasswordSecret" -}}
{{- $ref := include "tasks.redis.passwordSecret" . }}
{{- if and .Values.redis.enabled .Release.IsUpgrade }}
{{- $running := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "tasks.redis.fullname" .) }}
{{- if eq (dig "metadata" "labels" "app.kubernetes.io/instance" "" $running) .Release.Name }}
{{- $ref = "" }}
{{- range $running.spec.template.spec.containers }}
{{- range (default list .env) }}
{{- if eq .name "REDIS_PASSWORD" }}
{{- $secret := dig "valueFrom" "secretKeyRef" dict . }}
{{- $ref = dict "name" $secret.name "key" $secret.key | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
Fails an upgrade whose migrate hook would address a bundled Redis that does not exist yet
(`redis.enabled` turned on in a release that used externalRedis, or the Redis renamed): hooks run
before the release's objects are created, so the hook would wait out its deadline, and the data
would stay behind in the old Redis. Only on a real upgrade (the deployed ConfigMap is found).
*/}}
{{- define "tasks.checkRedisMove" -}}
{{- if and .Release.IsUpgrade .Values.redis.enabled .Values.migrate.enabled }}
{{- $redis := include "tasks.redis.fullname" . }}
{{- if and (lookup "v1" "ConfigMap" .Release.Namespace (include "tasks.fullname" .)) (not (lookup "apps/v1" "StatefulSet" .Release.Namespace $redis)) }}
{{- fail (printf "this upgrade moves the release to a new bundled Redis (%s), which starts empty and does not exist yet when the pre-upgrade migrate hook runs: move the data with `jobs export`/`jobs import` and upgrade with --set migrate.enabled=false, as the chart README's \"Moving to another Redis\" says" $redis) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The non-secret settings: the ConfigMap's data (also used by the migrate hook, see job-migrate.yaml). */}}
{{- define "tasks.configData" -}}
PORT: {{ .Values.containerPort | quote }}
TASKS_METRICS_PORT: {{ .Values.metrics.port | quote }}
TASKS_HOST: {{ .Values.config.host | quote }}
TASKS_STORE: "redis"
TASKS_REDIS_MODE: {{ include "tasks.redis.mode" . | quote }}
TASKS_REDIS_URL: {{ include "tasks.redis.url" . | quote }}
TASKS_REDIS_SHARDS: {{ .Values.externalRedis.shards | toString | quote }}
TASKS_REDIS_USERNAME: {{ include "tasks.redis.username" . | quote }}
TASKS_REDIS_TIMEOUT_SECONDS: {{ .Values.config.redisTimeoutSeconds | toString | quote }}
TASKS_REDIS_MAX_CONNECTIONS: {{ .Values.config.redisMaxConnections | toString | quote }}
TASKS_REDIS_KEY_PREFIX: {{ .Values.config.redisKeyPrefix | quote }}
TASKS_MAX_BODY_BYTES: {{ .Values.config.maxBodyBytes | toString | quote }}
TASKS_MAX_HEADER_BYTES: {{ .Values.config.maxHeaderBytes | toString | quote }}
TASKS_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
TASKS_SHUTDOWN_DELAY_SECONDS: {{ .Values.config.shutdownDelaySeconds | toString | quote }}
TASKS_GRACEFUL_TIMEOUT_SECONDS: {{ .Values.config.gracefulTimeoutSeconds | toString | quote }}
TASKS_IDEMPOTENCY_TTL_SECONDS: {{ .Values.config.idempotencyTtlSeconds | toString | quote }}
TASKS_CLEANUP_RETENTION: {{ .Values.config.cleanupRetention | quote }}
{{- end }}

{{/* envFrom of every app container (API, cleanup, migrate): identical by construction. */}}
{{- define "tasks.envFrom" -}}
- configMapRef:
    name: {{ include "tasks.fullname" . }}
- secretRef:
    name: {{ include "tasks.secretName" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
env of every app container: the Redis password by reference, then extraEnv. Call with
(dict "root" $ "passwordSecret" <a reference from tasks.redis.passwordSecret or its kin>).
*/}}
{{- define "tasks.env" -}}
{{- with .passwordSecret }}
{{- $ref := fromJson . }}
- name: TASKS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every pod of the chart (restricted by default). */}}
{{- define "tasks.podCommon" -}}
serviceAccountName: {{ include "tasks.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
What every app container (API, cleanup, migrate) shares, so one image reference, one security
context and one env reach all three by construction. Call with (dict "root" $ "hook" bool): the
migrate hook runs before the ConfigMap is upgraded and before Redis restarts (see job-migrate.yaml),
so it also gets this revision's non-secret settings as explicit env, which wins over envFrom, and
authenticates as the running Redis expects.
*/}}
{{- define "tasks.appContainer" -}}
{{- $root := .root -}}
image: {{ include "tasks.image" $root | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
envFrom:
  {{- include "tasks.envFrom" $root | nindent 2 }}
{{- $pinned := "" }}
{{- if .hook }}
{{- range $name, $value := (include "tasks.configData" $root | fromYaml) }}
{{- $pinned = printf "%s\n- name: %s\n  value: %s" $pinned $name ($value | toString | quote) }}
{{- end }}
{{- end }}
{{- $password := include (ternary "tasks.redis.runningPasswordSecret" "tasks.redis.passwordSecret" (eq .hook true)) $root }}
{{- with (printf "%s\n%s" $pinned (include "tasks.env" (dict "root" $root "passwordSecret" $password)) | trim) }}
env:
  {{- . | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "tasks.tmpMount" $root | nindent 2 }}
  {{- with $root.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The only writable path of every app container. */}}
{{- define "tasks.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* The volumes of every pod running an app container: /tmp, then extraVolumes. */}}
{{- define "tasks.appVolumes" -}}
{{ include "tasks.tmpVolume" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tasks.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
