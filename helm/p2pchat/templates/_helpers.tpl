{{/*
The components this chart runs, in the order they are rendered.
*/}}
{{- define "p2pchat.components" -}}
bootstrap relay archiver
{{- end }}

{{- define "p2pchat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name. Component names are built from it cut to 42 characters, so that
"<base>-bootstrap" stays within 52: a StatefulSet's name ends up in its pods'
controller-revision-hash label (63 characters at most) with an 11-character hash appended.
*/}}
{{- define "p2pchat.fullname" -}}
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

{{- define "p2pchat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Called with (dict "root" $ "component" NAME). */}}
{{- define "p2pchat.componentName" -}}
{{- printf "%s-%s" (include "p2pchat.fullname" .root | trunc 42 | trimSuffix "-") .component }}
{{- end }}

{{- define "p2pchat.headlessName" -}}
{{- printf "%s-headless" (include "p2pchat.componentName" .) }}
{{- end }}

{{- define "p2pchat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "p2pchat.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "p2pchat.commonLabels" -}}
helm.sh/chart: {{ include "p2pchat.chart" . }}
app.kubernetes.io/name: {{ include "p2pchat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: p2pchat
{{- end }}

{{- define "p2pchat.labels" -}}
{{ include "p2pchat.commonLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "p2pchat.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{/*
The bootstrap node of this release as a peer address, through its Service's DNS name (py-libp2p
resolves /dns4 before dialling; the name must be fully qualified).
*/}}
{{- define "p2pchat.bootstrapAddress" -}}
{{- $name := include "p2pchat.componentName" (dict "root" . "component" "bootstrap") }}
{{- printf "/dns4/%s.%s.svc.%s/tcp/%d/p2p/%s" $name .Release.Namespace .Values.clusterDomain (int .Values.bootstrap.port) .Values.bootstrap.peerId }}
{{- end }}

{{/*
A component's p2pchat configuration file (YAML), called with (dict "root" $ "component" NAME):
the values' config passthrough plus the keys the chart owns (role, data dir, listen addresses,
announce, bootstrap peers, metrics endpoint).
*/}}
{{- define "p2pchat.config" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
{{- $config := deepCopy (default (dict) $values.config) }}
{{- $node := default (dict) (get $config "node") }}
{{- $port := int $values.port }}
{{- $_ := set $node "data_dir" "/data" }}
{{- $_ := set $node "listen" (list (printf "/ip4/0.0.0.0/tcp/%d" $port) (printf "/ip4/0.0.0.0/tcp/%d/ws" $port)) }}
{{- $announce := list }}
{{- range $values.announce }}
{{- $announce = append $announce . }}
{{- end }}
{{- $_ := set $node "announce" $announce }}
{{- $bootstrap := list }}
{{- range $root.Values.bootstrapPeers }}
{{- $bootstrap = append $bootstrap . }}
{{- end }}
{{- if and (ne .component "bootstrap") $root.Values.bootstrap.enabled $root.Values.bootstrap.peerId }}
{{- $bootstrap = append $bootstrap (include "p2pchat.bootstrapAddress" $root) }}
{{- end }}
{{- $_ := set $node "bootstrap" $bootstrap }}
{{- $_ := set $config "node" $node }}
{{- $_ := set $config "roles" (list .component) }}
{{- $_ := set $config "metrics" (dict "enabled" true "listen" (printf "0.0.0.0:%d" (int $root.Values.metrics.port))) }}
{{- toYaml $config }}
{{- end }}

{{/*
Environment of both containers. The image sets P2PCHAT_NODE__DATA_DIR and
P2PCHAT_METRICS__LISTEN, and the environment outranks the config file, so the chart sets them
to what the config file says.
*/}}
{{- define "p2pchat.env" -}}
- name: P2PCHAT_NODE__DATA_DIR
  value: /data
- name: P2PCHAT_METRICS__LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- end }}

{{- define "p2pchat.checkComponents" -}}
{{- if not (or .Values.bootstrap.enabled .Values.relay.enabled .Values.archiver.enabled) }}
{{- fail "p2pchat: no component enabled; enable at least one of bootstrap, relay, archiver" }}
{{- end }}
{{- end }}
