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
{{- $urls = append $urls (printf "https://%s-%d.%s:2379" $service $i $service) -}}
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
[{{ range $i := until (int .Values.coordinator.replicas) }}{{ if $i }}, {{ end }}"https://{{ $service }}-{{ $i }}.{{ $service }}:{{ $port }}"{{ end }}]
{{- end }}

{{/* The coordinators' S3 credentials: they publish each backup's manifest (the commit
point) create-only, so they get the append key (its Secret's access-key and
secret-key items), never the admin or delete key. */}}
{{- define "haven.manifestEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storageKeys.append }}
      key: access-key
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storageKeys.append }}
      key: secret-key
- name: AWS_REGION
  value: us-east-1
{{- end }}

{{/* A least-privilege storage key as a volume: its Secret's key.toml (access_key_id,
secret_access_key), mounted at /etc/haven/storage-keys/NAME/key.toml. Arguments: the
volume name and the Secret. */}}
{{- define "haven.storageKeyVolume" -}}
- name: {{ index . 0 }}
  secret:
    secretName: {{ index . 1 }}
    items:
      - key: key.toml
        path: key.toml
{{- end }}

{{/* How Haven's daemons log: `logFormat` and, when set, `logLevel` (HAVEN_LOG). */}}
{{- define "haven.logEnv" -}}
- name: HAVEN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.logLevel }}
- name: HAVEN_LOG
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The private CA of storage nodes (`caConfigMap`), as a mount and a volume. */}}
{{- define "haven.caMount" -}}
{{- if .Values.caConfigMap }}
- name: ca
  mountPath: /etc/haven/ca
  readOnly: true
{{- end }}
{{- end }}
{{- define "haven.caVolume" -}}
{{- with .Values.caConfigMap }}
- name: ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end }}

{{/* etcd's client certificate and Haven's etcd password, as mounts and volumes: the
files `[etcd_security]` of coordinator.toml names. */}}
{{- define "haven.etcdClientMounts" -}}
- name: etcd-tls
  mountPath: /etc/haven/etcd-tls
  readOnly: true
- name: etcd-auth
  mountPath: /etc/haven/etcd-auth
  readOnly: true
{{- end }}
{{- define "haven.etcdClientVolumes" -}}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.clientSecret }}
    defaultMode: 0440
- name: etcd-auth
  secret:
    secretName: {{ .Values.etcd.auth.passwordSecret }}
    defaultMode: 0440
    items:
      - key: haven
        path: password
{{- end }}

{{/* The pod security context of every pod but the worker's: the Pod Security
"restricted" level (deploy/check.py checks it). uid 10001 is the image's `haven`
user; fsGroup makes mounted Secrets (mode 0440) and volumes readable by it. */}}
{{- define "haven.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The security context of every container: no privilege escalation, no
capabilities, a read-only root file system (writable paths are volumes). */}}
{{- define "haven.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* /tmp as an emptyDir, for containers whose root file system is read-only. */}}
{{- define "haven.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
{{- define "haven.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* etcd client URLs of the chart's etcd, comma-separated (for etcdctl). */}}
{{- define "haven.etcdctlEndpoints" -}}
{{- $etcd := printf "%s-etcd" (include "haven.fullname" .) -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "https://%s-%d.%s:2379" $etcd $i $etcd) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- end }}

{{/* Coordinator gRPC URLs, comma-separated (HAVEN_COORDINATOR of the CLI). */}}
{{- define "haven.coordinatorList" -}}
{{- include "haven.coordinatorUrls" . | fromJsonArray | join "," -}}
{{- end }}
