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
{{- include "haven.workerSettings" (dict "root" . "worker" .Values.worker "scratchDir" .Values.worker.scratchDir) }}

[[hosts]]
name = "${NODE_NAME}"
{{- if eq .Values.worker.mode "libvirt" }}
libvirt = {{ .Values.worker.libvirt.uri | quote }}
qemu_user = {{ .Values.worker.libvirt.qemuUser | quote }}
{{- else }}
qmp_dir = {{ .Values.worker.qmpDir | quote }}
{{- end }}

{{ include "haven.workerAccess" . }}
{{- end }}

{{/* worker.toml of the vCenter worker: one host per vCenter, its credentials file and
CA from the Secret and ConfigMap (or Secret) mounted under /etc/haven/vcenter/NAME/. */}}
{{- define "haven.vcenterWorkerToml" -}}
{{- include "haven.workerSettings" (dict "root" . "worker" .Values.vcenterWorker "scratchDir" "/var/lib/haven/scratch") }}
{{- range .Values.vcenterWorker.vcenters }}

[[hosts]]
name = {{ .name | quote }}
vcenter = {{ .url | quote }}
vcenter_credentials_file = "/etc/haven/vcenter/{{ .name }}/credentials/credentials.toml"
{{- if or .caConfigMap .caSecret }}
vcenter_ca_file = "/etc/haven/vcenter/{{ .name }}/ca/ca.crt"
{{- end }}
{{- end }}

{{ include "haven.workerAccess" . }}
{{- end }}

{{/* The top of a worker.toml: its identity, coordinators and limits, from a values
block with maxJobs, connections, readLimitBytesPerSecond and drainSeconds.
Arguments: (dict "root" $ "worker" BLOCK "scratchDir" PATH). */}}
{{- define "haven.workerSettings" -}}
id = "${POD_NAME}"
coordinators = {{ include "haven.coordinatorUrls" .root }}
max_jobs = {{ .worker.maxJobs }}
scratch_dir = {{ .scratchDir | quote }}
connections = {{ .worker.connections }}
read_limit_bytes_per_second = {{ .worker.readLimitBytesPerSecond | int64 }}
drain_seconds = {{ .worker.drainSeconds | int64 }}
{{- end }}

{{/* The bottom of every worker.toml: the control-plane certificate and the storage
keys, the same files in every worker pod. */}}
{{- define "haven.workerAccess" -}}
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
