{{/*
Names: the chart's name, the release's full name (63 characters at most,
as a DNS label), and the labels every object carries.
*/}}
{{- define "backupd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "backupd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "backupd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backupd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "backupd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "backupd.selectorLabels" . }}
app.kubernetes.io/version: {{ include "backupd.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: node-daemon
app.kubernetes.io/part-of: backupd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "backupd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "backupd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "backupd.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "backupd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "backupd.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* The TLS secret: cert-manager's Certificate writes it, or the operator's own. */}}
{{- define "backupd.tlsSecretName" -}}
{{- if .Values.grpc.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "backupd.fullname" .) -}}
{{- else -}}
{{- required "grpc.tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (grpc.tls.certManager.enabled is false)" .Values.grpc.tls.secretName -}}
{{- end -}}
{{- end -}}

{{/*
backupd.durationSeconds: a Go duration ("30s", "2m", "1h30m", "500ms") in
whole seconds, rounded up.
*/}}
{{- define "backupd.durationSeconds" -}}
{{- $d := toString . -}}
{{- if eq $d "0" -}}
0
{{- else -}}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$" $d) -}}
{{- fail (printf "config.shutdown_grace %q: want a duration such as 30s, 2m or 1h30m" $d) -}}
{{- end -}}
{{- $units := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" $d -1 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $total = addf $total (mulf (float64 $num) (get $units (trimPrefix $num .))) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}
{{- end -}}

{{/*
backupd.shutdownGraceSeconds: config.shutdown_grace, else the daemon's
default (daemon.DefaultShutdownGrace, 30s), in seconds.
*/}}
{{- define "backupd.shutdownGraceSeconds" -}}
{{- $c := .Values.config | default dict -}}
{{- include "backupd.durationSeconds" (get $c "shutdown_grace" | default "30s") -}}
{{- end -}}

{{/* Paths inside the container. */}}
{{- define "backupd.configDir" -}}/etc/backupd/config{{- end -}}
{{- define "backupd.tlsDir" -}}/etc/backupd/tls{{- end -}}

{{/*
backupd.config: the daemon's config file (deploy/backupd.yaml's schema):
.Values.config as given, with what the chart owns set from the other
values. Refuses secrets and the keys the chart sets.
*/}}
{{- define "backupd.config" -}}
{{- $c := deepCopy (.Values.config | default dict) -}}
{{- range $k := list "listen" "metrics_listen" "allow_insecure" "tls" "workspace_roots" "cache_dir" "cache_size" -}}
{{- if hasKey $c $k -}}
{{- fail (printf "config.%s is set by the chart from its other values (grpc, metrics, workspaces, cache): remove it from config" $k) -}}
{{- end -}}
{{- end -}}
{{- $storage := get $c "storage" | default dict -}}
{{- if not (get $storage "url") -}}
{{- fail "config.storage.url is required (docs/STORAGE.md: s3://, minio://, gs://, azblob://)" -}}
{{- end -}}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@" (get $storage "url") -}}
{{- fail "config.storage.url: credentials do not belong in the URL; use credentials.secretName or workload identity" -}}
{{- end -}}
{{- range $backend := list "s3" "minio" "gcs" "azure" -}}
{{- $section := get $storage $backend | default dict -}}
{{- range $k := list "accesskey" "secretkey" "accountkey" "connectionstring" -}}
{{- if hasKey $section $k -}}
{{- fail (printf "config.storage.%s.%s: credentials never go in values in clear; put them in a Secret (credentials.secretName) or use workload identity" $backend $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.grpc.mode "socket" -}}
{{- $_ := set $c "listen" (printf "unix://%s/backupd.sock" (trimSuffix "/" .Values.grpc.socket.hostPath)) -}}
{{- else -}}
{{- $_ := set $c "listen" (printf ":%d" (int .Values.grpc.tls.port)) -}}
{{- $tls := dict "cert" (printf "%s/tls.crt" (include "backupd.tlsDir" .)) "key" (printf "%s/tls.key" (include "backupd.tlsDir" .)) -}}
{{- if .Values.grpc.tls.mutual -}}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" (include "backupd.tlsDir" .)) -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- $_ := set $c "metrics_listen" (printf ":%d" (int .Values.metrics.port)) -}}
{{- $_ := set $c "workspace_roots" (list (trimSuffix "/" .Values.workspaces.hostPath)) -}}
{{- $_ := set $c "cache_dir" (trimSuffix "/" .Values.cache.hostPath) -}}
{{- $_ := set $c "cache_size" (int64 .Values.cache.sizeBytes) -}}
{{- toYaml $c -}}
{{- end -}}
