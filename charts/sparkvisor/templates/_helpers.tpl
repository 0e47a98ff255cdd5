{{/*
Names, labels and the values the templates derive from the sparkvisor
configuration (ports, durations, modes). Every derived value has one source:
the `config` block that is also rendered into sparkvisor.toml.
*/}}

{{- define "sparkvisor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sparkvisor.fullname" -}}
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

{{/* The headless driver Service's name (at most 63 characters). */}}
{{- define "sparkvisor.driverServiceName" -}}
{{- printf "%s-driver" (include "sparkvisor.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "sparkvisor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sparkvisor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sparkvisor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sparkvisor.labels" -}}
helm.sh/chart: {{ include "sparkvisor.chart" . }}
{{ include "sparkvisor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sparkvisor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when executors run as Kubernetes pods (client mode, k8s:// or default master). */}}
{{- define "sparkvisor.clientK8s" -}}
{{- $c := .Values.config.spark -}}
{{- if and (eq $c.mode "client") (or (not $c.client.master) (hasPrefix "k8s://" (toString $c.client.master))) -}}
true
{{- end -}}
{{- end }}

{{/* "true" when the checkpoint is replicated to S3. */}}
{{- define "sparkvisor.s3" -}}
{{- if .Values.config.checkpoint.s3.uri -}}
true
{{- end -}}
{{- end }}

{{/* "true" when Spark writes event logs to config.eventlog.dir (telemetry or shipping). */}}
{{- define "sparkvisor.eventlog" -}}
{{- if and .Values.config.eventlog.dir (or .Values.config.telemetry.enabled .Values.config.eventlog.s3_uri) -}}
true
{{- end -}}
{{- end }}

{{/* "true" when the pod needs a ServiceAccount of its own. */}}
{{- define "sparkvisor.needsServiceAccount" -}}
{{- if or (include "sparkvisor.clientK8s" .) (include "sparkvisor.s3" .) .Values.config.eventlog.s3_uri -}}
true
{{- end -}}
{{- end }}

{{- define "sparkvisor.serviceAccountName" -}}
{{- if and .Values.serviceAccount.create (include "sparkvisor.needsServiceAccount" .) }}
{{- default (include "sparkvisor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The port of an ADDRESS:PORT string (IPv6 in brackets allowed); fails without one. */}}
{{- define "sparkvisor.listenPort" -}}
{{- $listen := toString .Values.config.probes.listen -}}
{{- $m := regexFind ":[0-9]+$" $listen -}}
{{- if not $m -}}
{{- fail (printf "config.probes.listen = %q: expected ADDRESS:PORT such as 0.0.0.0:8080 (its port becomes the container and probe port)" $listen) -}}
{{- end -}}
{{- trimPrefix ":" $m -}}
{{- end }}

{{/* The port of config.probes.spark_ui (http://HOST:PORT[/path]); fails without one. */}}
{{- define "sparkvisor.sparkUiPort" -}}
{{- $url := toString .Values.config.probes.spark_ui -}}
{{- $m := regexFind "^https?://[^/]*:[0-9]+" $url -}}
{{- if not $m -}}
{{- fail (printf "config.probes.spark_ui = %q: expected http://HOST:PORT (its port is exposed as spark-ui)" $url) -}}
{{- end -}}
{{- regexFind "[0-9]+$" $m -}}
{{- end }}

{{/*
Whole seconds (rounded up) of a sparkvisor duration: a number of seconds or
a string of NUMBER+UNIT parts ("30s", "1m 30s", "500ms"; units ms s m h d).
*/}}
{{- define "sparkvisor.seconds" -}}
{{- $v := . -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- int64 $v -}}
{{- else -}}
{{- $s := trim (toString $v) -}}
{{- if regexMatch "^[0-9]+$" $s -}}
{{- int64 (regexReplaceAll "^0+([0-9])" $s "${1}") -}}
{{- else -}}
{{- $ms := 0 -}}
{{- range $part := regexFindAll "[0-9]+\\s*(ms|s|m|h|d)" $s -1 -}}
{{- $n := int64 (regexReplaceAll "^0+([0-9])" (regexFind "^[0-9]+" $part) "${1}") -}}
{{- $unit := trim (regexFind "[a-z]+$" $part) -}}
{{- $mult := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- $ms = add $ms (mul $n (get $mult $unit)) -}}
{{- end -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* terminationGracePeriodSeconds: stop_grace (+ final S3 sync, + last event log upload) + margin. */}}
{{- define "sparkvisor.terminationGrace" -}}
{{- $grace := int64 (include "sparkvisor.seconds" .Values.config.supervisor.stop_grace) -}}
{{- if include "sparkvisor.s3" . -}}
{{- $grace = add $grace (int64 (include "sparkvisor.seconds" .Values.config.checkpoint.s3.final_sync_timeout)) -}}
{{- end -}}
{{- if .Values.config.eventlog.s3_uri -}}
{{- $grace = add $grace (int64 (include "sparkvisor.seconds" .Values.config.eventlog.final_sync_timeout)) -}}
{{- end -}}
{{- add $grace .Values.terminationGraceMarginSeconds -}}
{{- end }}

{{/* Where the chart mounts its ConfigMap, and the files in it. */}}
{{- define "sparkvisor.configDir" -}}/etc/sparkvisor{{- end }}
{{- define "sparkvisor.executorTemplatePath" -}}/etc/sparkvisor/executor-pod-template.yaml{{- end }}
{{- define "sparkvisor.sparkDefaultsPath" -}}/etc/sparkvisor/spark-defaults.conf{{- end }}

{{/*
The configuration sparkvisor gets: `config` plus what the chart derives
(properties file, executor image and pod template). Returned as YAML.
*/}}
{{- define "sparkvisor.effectiveConfig" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if not $cfg.spark.app -}}
{{- fail "config.spark.app is required: the application to run (a .py file or jar in the image, or s3://bucket/key)" -}}
{{- end -}}
{{- if and $cfg.checkpoint.s3.uri (not $cfg.checkpoint.dir) -}}
{{- fail "config.checkpoint.s3.uri is set but config.checkpoint.dir is not: replication needs the local checkpoint directory" -}}
{{- end -}}
{{- if and $cfg.checkpoint.dir (not $cfg.checkpoint.quarantine_dir) -}}
{{- $_ := set $cfg.checkpoint "quarantine_dir" (printf "%s.quarantine" (trimSuffix "/" (toString $cfg.checkpoint.dir))) -}}
{{- end -}}
{{- if not $cfg.spark.artifacts_dir -}}
{{- $_ := set $cfg.spark "artifacts_dir" (include "sparkvisor.defaultArtifactsDir" $cfg) -}}
{{- end -}}
{{- if not $cfg.spark.properties_file -}}
{{- $_ := set $cfg.spark "properties_file" (include "sparkvisor.sparkDefaultsPath" .) -}}
{{- else if .Values.sparkDefaults -}}
{{- fail "sparkDefaults is set but config.spark.properties_file points elsewhere: sparkDefaults would be ignored; use one or the other" -}}
{{- end -}}
{{- if include "sparkvisor.clientK8s" . -}}
{{- if not $cfg.spark.client.executor_image -}}
{{- $_ := set $cfg.spark.client "executor_image" (include "sparkvisor.image" .) -}}
{{- end -}}
{{- if not $cfg.spark.client.executor_pod_template -}}
{{- $_ := set $cfg.spark.client "executor_pod_template" (include "sparkvisor.executorTemplatePath" .) -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/*
sparkvisor's own default for spark.artifacts_dir (called with the config):
"artifacts" beside checkpoint.dir, else /var/tmp/sparkvisor/artifacts.
*/}}
{{- define "sparkvisor.defaultArtifactsDir" -}}
{{- $dir := trimSuffix "/" (toString (default "" .checkpoint.dir)) -}}
{{- $parent := regexReplaceAll "/[^/]*$" $dir "" -}}
{{- if and $dir $parent -}}
{{- printf "%s/artifacts" $parent -}}
{{- else -}}
/var/tmp/sparkvisor/artifacts
{{- end -}}
{{- end }}

{{/* A TOML key: bare when possible, else a quoted string. */}}
{{- define "sparkvisor.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end }}

{{/*
A TOML table from a map: scalars and arrays first (JSON literals are valid
TOML for strings, numbers, booleans and arrays of them), then sub-tables.
Null values are left out (unset). Called with (dict "path" "a.b" "table" $map).
*/}}
{{- define "sparkvisor.tomlTable" -}}
{{- $path := .path -}}
{{- $subtables := list -}}
{{- if $path }}

[{{ $path }}]
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $subtables = append $subtables $k }}
{{- else if not (kindIs "invalid" $v) }}
{{ include "sparkvisor.tomlKey" $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- range $k := $subtables }}
{{- $p := include "sparkvisor.tomlKey" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}
{{- include "sparkvisor.tomlTable" (dict "path" $p "table" (index $.table $k)) }}
{{- end }}
{{- end }}

{{/* A spark-defaults.conf line value: booleans and numbers as text. */}}
{{- define "sparkvisor.confValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end }}

{{/* An emptyDir source as inline JSON from a map with optional medium and sizeLimit. */}}
{{- define "sparkvisor.emptyDir" -}}
{{- $d := dict -}}
{{- with .medium }}{{ $_ := set $d "medium" . }}{{ end -}}
{{- with .sizeLimit }}{{ $_ := set $d "sizeLimit" (toString .) }}{{ end -}}
{{- toJson $d -}}
{{- end }}
