{{/* Name prefix of every object of the release. */}}
{{- define "haven.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end }}

{{/* Labels of every object; pass the chart context. */}}
{{- define "haven.labels" -}}
app.kubernetes.io/name: haven
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Selector of one component: (dict "root" $ "component" "worker"). */}}
{{- define "haven.selector" -}}
app.kubernetes.io/name: haven
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "haven.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* etcd client URLs, as a TOML array. */}}
{{- define "haven.etcdEndpoints" -}}
{{- $urls := list -}}
{{- if .Values.etcd.enabled -}}
{{- $service := printf "%s-etcd" (include "haven.fullname" .) -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s:2379" $service $i $service) -}}
{{- end -}}
{{- else -}}
{{- $urls = .Values.etcd.externalEndpoints -}}
{{- end -}}
{{- if not $urls -}}
{{- fail "etcd: enable the chart's etcd or give etcd.externalEndpoints" -}}
{{- end -}}
[{{ range $i, $url := $urls }}{{ if $i }}, {{ end }}{{ $url | quote }}{{ end }}]
{{- end }}

{{/* Coordinator gRPC URLs, as a TOML array. */}}
{{- define "haven.coordinatorUrls" -}}
{{- $service := printf "%s-coordinator" (include "haven.fullname" .) -}}
{{- $port := int .Values.coordinator.grpcPort -}}
[{{ range $i := until (int .Values.coordinator.replicas) }}{{ if $i }}, {{ end }}"http://{{ $service }}-{{ $i }}.{{ $service }}:{{ $port }}"{{ end }}]
{{- end }}
