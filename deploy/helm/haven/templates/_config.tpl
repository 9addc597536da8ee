{{/*
The configuration files of the roles, one named template each: the ConfigMaps hold
them, and each pod template carries their checksum, so any value that changes a file
(also another role's, such as the coordinators' replica count in worker.toml) rolls
the pods that read it.
*/}}

{{- define "haven.coordinatorToml" -}}
{{- $name := printf "%s-coordinator" (include "haven.fullname" .) }}
id = "${POD_NAME}"
listen = "0.0.0.0:{{ .Values.coordinator.grpcPort }}"
advertise_url = "https://${POD_NAME}.{{ $name }}:{{ .Values.coordinator.grpcPort }}"
http_listen = "0.0.0.0:{{ .Values.coordinator.httpPort }}"
etcd = {{ include "haven.etcdEndpoints" . }}
worker_lease_seconds = {{ .Values.coordinator.workerLeaseSeconds }}
leader_lease_seconds = {{ .Values.coordinator.leaderLeaseSeconds }}
job_history_hours = {{ .Values.coordinator.jobHistoryHours }}
inventory_grace_minutes = {{ .Values.coordinator.inventoryGraceMinutes }}
allowed_repositories = {{ toJson .Values.coordinator.allowedRepositories }}

[tls]
cert = "/etc/haven/tls/tls.crt"
key = "/etc/haven/tls/tls.key"
client_ca = "/etc/haven/tls/ca.crt"

[etcd_security]
ca_file = "/etc/haven/etcd-tls/ca.crt"
cert_file = "/etc/haven/etcd-tls/tls.crt"
key_file = "/etc/haven/etcd-tls/tls.key"
user = {{ .Values.etcd.auth.user | quote }}
password_file = "/etc/haven/etcd-auth/password"
{{- with .Values.coordinator.notify }}
{{- if .webhooks }}

[notify]
cluster = {{ .cluster | quote }}
{{- range $index, $webhook := .webhooks }}

[[notify.webhook]]
url = {{ required "coordinator.notify.webhooks[].url" $webhook.url | quote }}
{{- with $webhook.events }}
events = {{ toJson . }}
{{- end }}
{{- if $webhook.secretName }}
secret_file = "/etc/haven/notify/{{ $index }}/secret"
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "haven.workerToml" -}}
id = "${POD_NAME}"
coordinators = {{ include "haven.coordinatorUrls" . }}
max_jobs = {{ .Values.worker.maxJobs }}
scratch_dir = {{ .Values.worker.scratchDir | quote }}
connections = {{ .Values.worker.connections }}
read_limit_bytes_per_second = {{ .Values.worker.readLimitBytesPerSecond | int64 }}
drain_seconds = {{ .Values.worker.drainSeconds | int64 }}

[[hosts]]
name = "${NODE_NAME}"
{{- if eq .Values.worker.mode "libvirt" }}
libvirt = {{ .Values.worker.libvirt.uri | quote }}
qemu_user = {{ .Values.worker.libvirt.qemuUser | quote }}
{{- else }}
qmp_dir = {{ .Values.worker.qmpDir | quote }}
{{- end }}

[tls]
ca = "/etc/haven/tls/ca.crt"
cert = "/etc/haven/tls/tls.crt"
key = "/etc/haven/tls/tls.key"

[storage]
append_key_file = "/etc/haven/storage-keys/append/key.toml"
delete_key_file = "/etc/haven/storage-keys/delete/key.toml"
{{- if .Values.storageKeys.secondaryAppend }}
secondary_key_file = "/etc/haven/storage-keys/secondary/key.toml"
{{- end }}
{{- if .Values.storageKeys.secondaryDelete }}
secondary_delete_key_file = "/etc/haven/storage-keys/secondary-delete/key.toml"
{{- end }}
{{- end }}

{{- define "haven.storageNodeToml" -}}
listen = "0.0.0.0:{{ .Values.storageNode.port }}"
data_dir = "/var/lib/haven/data"

{{- if .Values.storageNode.tlsSecret }}

[tls]
cert = "/etc/haven/tls/tls.crt"
key = "/etc/haven/tls/tls.key"
{{- else }}
# No storageNode.tlsSecret: plain HTTP on the pod network, warned at every start.
insecure = true
{{- end }}

# Least-privilege keys from their Secrets; the admin key comes from the environment.
[[keys]]
key_file = "/etc/haven/storage-keys/append/key.toml"
access = "append"

[[keys]]
key_file = "/etc/haven/storage-keys/delete/key.toml"
access = "delete"

[replication]
pull_sources = [{{ range $i, $url := .Values.storageNode.pullSources }}{{ if $i }}, {{ end }}{{ $url | quote }}{{ end }}]
{{- if .Values.caConfigMap }}
pull_ca_file = "/etc/haven/ca/ca.crt"
{{- end }}
{{- end }}
