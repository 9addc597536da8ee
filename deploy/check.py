#!/usr/bin/env python3
"""Checks deploy/ without a container runtime or a Kubernetes cluster.

    python3 deploy/check.py --haven PATH/TO/haven [--helm helm]

- compose.yaml: every Haven service's command line is run with the real `haven` binary
  and `--check-config`, against the configuration file the service mounts, so a flag,
  a file path or a setting that drifted from the code fails here. The example
  policy.toml is checked with `haven policy apply --check`, and every storage node its
  repository URLs name (site A's two) must be a storage-node service of compose.yaml.
- The Helm chart: `helm lint --strict`; values.schema.json refuses bad values (each
  of BAD_VALUES, by `helm lint` and `helm template`); then `helm template` with every
  set of values of `variants()` (default, external etcd, secondary site, https
  storage node with a private CA (stand-in certificates made with `openssl`),
  libvirt workers, a vCenter worker beside them, the repo-init and policies hooks,
  two storage nodes with repo init over both,
  monitoring and NetworkPolicy peers, single replicas); every rendered manifest of a Kubernetes kind is validated
  against the Kubernetes 1.30 schemas (`kubernetes-validate --strict`), the
  Prometheus Operator's kinds field by field (check_cluster_objects.py), and every
  Haven container's arguments are run the same way against the ConfigMap it mounts,
  with the pod's environment (POD_NAME, NODE_NAME, secrets) filled in; the policies
  hook's policy.toml with `haven policy apply --check`.
- Pod security (check_pod_security.py): every pod but the node worker meets the Pod
  Security Standards' "restricted" level (the vCenter worker too); the node worker
  differs only by root and its host folders (and CHOWN, DAC_OVERRIDE in libvirt mode),
  and keeps no privilege escalation, no capabilities, seccomp and a read-only root
  file system.
- The vCenter worker's worker.toml has one `vcenter` host per vcenterWorker.vcenters
  entry, whose credentials file (a stand-in TOML, read by `haven worker
  --check-config`) and CA are mounted from the Secret and ConfigMap or Secret named.
- Cluster objects (check_cluster_objects.py): PodDisruptionBudgets where a component
  has several replicas, NetworkPolicies letting in exactly the peers meant for each
  port, hook Jobs in order (etcd-init, repo-init, policies), etcd's auto-compaction,
  quota and probes, the coordinators' /healthz and /readyz probes, ServiceMonitors
  and the PrometheusRule.
- The worker's privileges are enough (check_worker_privileges.py): `haven backup qemu`
  of a running qemu-storage-daemon, as root with only the capabilities the rendered
  worker keeps (none) and no new privileges.
- The chart's scripts run for real (check_scripts.py): etcd-snapshot.sh against a
  real etcd with auth on (its snapshot restored into a second etcd), repo-init.sh
  twice against a real repository.
- Storage keys are least-privilege everywhere: every worker.toml names an append and a
  delete key file in [storage], every storage node declares an append and a delete key
  from key files (compose secrets, or Secrets mounted in the pod), and no Haven process
  gets the node's admin key.
- etcd is secured everywhere: every coordinator configuration (compose and chart) has
  `[etcd_security]` with a CA, a client certificate and key, a user and a password
  file, its etcd endpoints are https://, and every file it names is provided to the
  coordinator (a compose secret, or a Secret mounted in the pod), and so is every
  file a webhook of `[notify]` names (its signing secret). The one-shot
  etcd-auth-init.sh that creates the user and its role is run by compose and the chart
  and passes `sh -n`.

Exits non-zero with the failing command's output on the first problem.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse

import yaml

import check_cluster_objects as objects
import check_pod_security as pod_security
import check_scripts as scripts
import check_worker_privileges as worker_privileges

DEPLOY = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(DEPLOY, "helm", "haven")
ETCD_INIT = os.path.join(CHART, "files", "etcd-auth-init.sh")
LAB_HYPERVISOR = os.path.join(DEPLOY, "compose", "lab-hypervisor.sh")
ETCD_SNAPSHOT = os.path.join(CHART, "files", "etcd-snapshot.sh")
REPO_INIT = os.path.join(CHART, "files", "repo-init.sh")
RULES = os.path.join(CHART, "files", "haven-rules.yaml")
HAVEN_ROLES = ("coordinator", "worker", "storage-node")
ETCD_SECURITY_FIELDS = ("ca_file", "cert_file", "key_file", "user", "password_file")
# Values for the variables the compose file and the chart take from the environment.
DUMMY_ENV = {
    "HAVEN_PASSWORD": "example-password",
    "HAVEN_STORAGE_ACCESS_KEY": "example-access-key",
    "HAVEN_STORAGE_SECRET_KEY": "example-secret-key",
    "AWS_ACCESS_KEY_ID": "example-access-key",
    "AWS_SECRET_ACCESS_KEY": "example-secret-key",
}


def run(command, env=None):
    # A `--check-config` that regressed into starting the daemon must fail, not hang.
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAILED: {' '.join(command)} did not finish within 120 s")
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout


def check_haven(haven, args, env_extra, what):
    """Runs `haven ARGS --check-config` with a clean environment plus `env_extra`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **DUMMY_ENV, **env_extra}
    out = run([haven, *args, "--check-config"], env=env)
    if not out.strip().endswith("ok"):
        sys.exit(f"FAILED: {what}: haven did not confirm the configuration: {out}")
    print(f"ok  {what}: haven {' '.join(args)}")


def check_etcd_security(text, provided, what):
    """A coordinator.toml's etcd settings: TLS with a client certificate and a user,
    https:// endpoints, and every file it names among `provided` (the paths the
    coordinator's container receives)."""
    config = tomllib.loads(text)
    security = config.get("etcd_security")
    if security is None:
        sys.exit(f"FAILED: {what}: coordinator.toml has no [etcd_security]")
    missing = [field for field in ETCD_SECURITY_FIELDS if not security.get(field)]
    if missing:
        sys.exit(f"FAILED: {what}: [etcd_security] lacks {', '.join(missing)}")
    if security.get("insecure"):
        sys.exit(f"FAILED: {what}: [etcd_security] sets insecure")
    plain = [url for url in config.get("etcd", []) if not url.startswith("https://")]
    if plain or not config.get("etcd"):
        sys.exit(f"FAILED: {what}: etcd endpoints must be https://, got {config.get('etcd')}")
    for field in ETCD_SECURITY_FIELDS:
        if field != "user" and security[field] not in provided:
            sys.exit(f"FAILED: {what}: etcd_security.{field} {security[field]} is not provided "
                     f"to the coordinator (it has {sorted(provided)})")
    print(f"ok  {what}: etcd over https:// with a client certificate and user {security['user']}")
    webhooks = config.get("notify", {}).get("webhook", [])
    for index, webhook in enumerate(webhooks):
        for field in ("secret_file", "ca_file"):
            if field in webhook and webhook[field] not in provided:
                sys.exit(f"FAILED: {what}: notify.webhook[{index}].{field} {webhook[field]} is not "
                         f"provided to the coordinator (it has {sorted(provided)})")
    if webhooks:
        print(f"ok  {what}: {len(webhooks)} webhook(s), their files provided")


def check_etcd_init_script(users):
    """The script the one-shot etcd-init runs: valid sh, and run by `users`."""
    run(["sh", "-n", ETCD_INIT])
    if not users:
        sys.exit("FAILED: nothing runs etcd-auth-init.sh")
    print(f"ok  etcd-auth-init.sh (sh -n), run by {', '.join(users)}")


def key_file_stand_in(name, workdir):
    """A local storage key file (access_key_id, secret_access_key) with a dummy key
    named `name`, so a node declaring several keys sees distinct ones."""
    local = os.path.join(workdir, f"{name}.toml")
    with open(local, "w") as file:
        file.write(f'access_key_id = "{name}"\nsecret_access_key = "example-{name}"\n')
    return local


def storage_key_stand_ins(secrets, workdir):
    """Stand-ins for the storage key files among a compose service's secrets (the
    secrets named storage-*): container path -> local key file."""
    return {f"/run/secrets/{secret}": key_file_stand_in(secret, workdir)
            for secret in secrets if secret.startswith("storage-")}


def with_stand_ins(path, stand_ins, workdir):
    """`path`, or a copy of it whose secret paths point at their stand-ins."""
    with open(path) as file:
        text = file.read()
    replaced = text
    for container_path, local in stand_ins.items():
        replaced = replaced.replace(f'"{container_path}"', f'"{local}"')
    if replaced == text:
        return path
    copy = os.path.join(workdir, "compose-" + os.path.basename(path))
    with open(copy, "w") as file:
        file.write(replaced)
    return copy


def check_storage_keys(text, role, what):
    """Least-privilege storage keys, named only by file: a worker.toml has an append and
    a delete key file in [storage]; a storage node declares exactly an append and a
    delete key, each from a `key_file` (its admin key comes from the environment)."""
    config = tomllib.loads(text)
    if role == "worker":
        storage = config.get("storage", {})
        missing = [f for f in ("append_key_file", "delete_key_file") if not storage.get(f)]
        if missing:
            sys.exit(f"FAILED: {what}: worker.toml [storage] lacks {', '.join(missing)}")
        print(f"ok  {what}: one storage key per job kind")
        return
    keys = config.get("keys", [])
    found = sorted(key.get("access", "") for key in keys)
    if any("secret_key" in key or not key.get("key_file") for key in keys) \
            or found != ["append", "delete"]:
        sys.exit(f"FAILED: {what}: storage node keys must be an append and a delete key "
                 f"from key_file, got {found}")
    print(f"ok  {what}: keys {', '.join(found)} from files")


def interpolate(value):
    """A compose value with each `${NAME:-DEFAULT}` replaced by its default, as compose
    does when NAME is unset (the default must then be valid for haven too)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def check_compose(haven, workdir):
    with open(os.path.join(DEPLOY, "compose.yaml")) as file:
        compose = yaml.safe_load(file)
    checked = 0
    coordinators = 0
    etcd_init = []
    for name, service in compose["services"].items():
        if name == "hypervisor":
            # The lab's stand-in for a KVM host: a shell script, checked as one.
            mounted = dict(volume.split(":")[1::-1] for volume in service["volumes"])
            if mounted.get(service["entrypoint"][-1]) != "./compose/lab-hypervisor.sh":
                sys.exit(f"FAILED: compose service {name}: unknown entrypoint {service['entrypoint']}")
            run(["sh", "-n", LAB_HYPERVISOR])
            print(f"ok  compose service {name}: lab-hypervisor.sh parses")
            continue
        if not str(service.get("image", "")).startswith("${HAVEN_IMAGE"):
            continue
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounts[target] = os.path.join(DEPLOY, source[2:])
        secrets = service.get("secrets", [])
        undefined = [secret for secret in secrets if secret not in compose.get("secrets", {})]
        if undefined:
            sys.exit(f"FAILED: compose service {name}: secrets {undefined} are not defined")
        if "entrypoint" in service:
            # Not a Haven command line: the one-shot etcd-init.
            if mounts.get(service["entrypoint"][-1]) != ETCD_INIT:
                sys.exit(f"FAILED: compose service {name}: unknown entrypoint {service['entrypoint']}")
            etcd_init.append(f"compose service {name}")
            continue
        stand_ins = storage_key_stand_ins(secrets, workdir)
        args = [mounts.get(arg, arg) for arg in service["command"]]
        missing = [arg for arg in args if arg.startswith("/etc/haven/")]
        if missing:
            sys.exit(f"FAILED: compose service {name}: {missing} not mounted")
        role = service["command"][0]
        if role in ("worker", "storage-node"):
            config = args[args.index("--config") + 1]
            with open(config) as file:
                check_storage_keys(file.read(), role, f"compose service {name}")
            args = [with_stand_ins(arg, stand_ins, workdir) if arg == config else arg
                    for arg in args]
        environment = service.get("environment") or {}
        if "HAVEN_STORAGE_ACCESS_KEY" in str(environment.get("AWS_ACCESS_KEY_ID", "")):
            sys.exit(f"FAILED: compose service {name} signs with the storage nodes' admin key")
        env = {k: DUMMY_ENV.get(k, interpolate(str(v))) for k, v in environment.items()}
        check_haven(haven, args, env, f"compose service {name}")
        checked += 1
        if service["command"][0] == "coordinator":
            config = mounts[service["command"][service["command"].index("--config") + 1]]
            with open(config) as file:
                text = file.read()
            # A coordinator on the embedded store (site B's, after a failover) has no etcd.
            if "etcd" in tomllib.loads(text):
                provided = {f"/run/secrets/{secret}" for secret in secrets}
                check_etcd_security(text, provided, f"compose service {name}")
            coordinators += 1
    if checked < 5 or coordinators == 0:
        sys.exit(f"FAILED: only {checked} Haven services ({coordinators} coordinators) "
                 "found in compose.yaml")
    check_etcd_init_script(etcd_init)
    for name in ["policy.toml", "policy-dr.toml"]:
        out = run([haven, "policy", "apply", os.path.join(DEPLOY, "compose", name), "--check"])
        print(f"ok  compose {name}: {out.strip()}")
        check_policy_endpoints(compose, name)


def check_policy_endpoints(compose, name):
    """Every storage node a compose policy's repository URLs name (each `endpoint=`)
    is a storage-node service of compose.yaml, at its container port."""
    with open(os.path.join(DEPLOY, "compose", name), "rb") as file:
        policies = tomllib.load(file)["policy"]
    nodes = {service: node for service, node in compose["services"].items()
             if node.get("command", [None])[0] == "storage-node"}
    for policy in policies:
        for url in filter(None, [policy.get("repository"), policy.get("replicate_to")]):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
            for endpoint in query.get("endpoint", []):
                address = urllib.parse.urlsplit(endpoint)
                if address.hostname not in nodes or address.port != 9000:
                    sys.exit(f"FAILED: compose {name}: {endpoint} in {url} is not a storage "
                             f"node of compose.yaml (services {sorted(nodes)}, port 9000)")
            print(f"ok  compose {name}: {len(query.get('endpoint', []))} storage node(s) "
                  f"of compose.yaml in {url}")


def helm_values(values):
    """`--set KEY=VALUE` for each value; `--set-file` where VALUE is `@FILE`."""
    args = []
    for key, value in values.items():
        if value.startswith("@"):
            args += ["--set-file", f"{key}={value[1:]}"]
        else:
            args += ["--set", f"{key}={value}"]
    return args


def render(helm, values, workdir):
    """The chart rendered with `values`: every manifest of a Kubernetes kind validated
    against the 1.30 schemas; the Prometheus Operator's kinds (no schema there) are
    left to check_cluster_objects, which checks their fields."""
    rendered = run([helm, "template", "demo", CHART, "--namespace", "backup", *helm_values(values)])
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    path = os.path.join(workdir, "rendered.yaml")
    with open(path, "w") as file:
        yaml.safe_dump_all([doc for doc in docs if not objects.is_crd_kind(doc)], file)
    run(["kubernetes-validate", "--strict", "-k", "1.30.0", path])
    return docs


# Values the schema (values.schema.json) must refuse, each with what helm must say.
BAD_VALUES = {
    "an unknown key (a typo)": ({"worker": {"maxjobs": 4}}, "maxjobs"),
    "a string for a number": ({"coordinator": {"replicas": "two"}}, "/coordinator/replicas"),
    "a mode not in the enum": ({"worker": {"mode": "kvm"}}, "/worker/mode"),
    "a plain-http etcd endpoint": ({"etcd": {"externalEndpoints": ["http://etcd:2379"]}},
                                   "/etcd/externalEndpoints/0"),
    "a webhook without url": ({"coordinator": {"notify": {"webhooks": [{"events": ["job_failed"]}]}}},
                              "url"),
    "a vCenter URL that is not https": ({"vcenterWorker": {"vcenters": [
        {"name": "vc-1", "url": "http://vc.example/sdk", "credentialsSecret": "vc"}]}},
        "/vcenterWorker/vcenters/0/url"),
    "a vCenter with a CA ConfigMap and a CA Secret": ({"vcenterWorker": {"vcenters": [
        {"name": "vc-1", "url": "https://vc.example/sdk", "credentialsSecret": "vc",
         "caConfigMap": "ca", "caSecret": "ca"}]}}, "/vcenterWorker/vcenters/0"),
    "a vCenter worker with no vCenter": ({"vcenterWorker": {"enabled": True}},
                                         "/vcenterWorker/vcenters"),
    "a NetworkPolicy peer of unknown shape": ({"networkPolicy": {"coordinatorFrom": [{"cidr": "10.0.0.0/8"}]}},
                                              "/networkPolicy/coordinatorFrom/0"),
}


def check_schema_refuses(helm, workdir):
    """`helm lint --strict` and `helm template` refuse each of BAD_VALUES, naming it."""
    for what, (values, named) in BAD_VALUES.items():
        path = os.path.join(workdir, "bad-values.yaml")
        with open(path, "w") as file:
            yaml.safe_dump(values, file)
        for command in ([helm, "lint", "--strict", CHART, "-f", path],
                        [helm, "template", "demo", CHART, "-f", path]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            output = result.stdout + result.stderr
            if result.returncode == 0 or "schema" not in output or named not in output:
                sys.exit(f"FAILED: {' '.join(command[:2])} accepted {what} ({values}), or did not "
                         f"name {named}:\n{output}")
        print(f"ok  values.schema.json refuses {what} (helm lint --strict and helm template)")


def fail_on(problems, what):
    if problems:
        sys.exit(f"FAILED: {what}:\n  " + "\n  ".join(problems))


def make_tls_files(workdir):
    """A self-signed certificate and its key, standing in for the Secrets and CA
    ConfigMaps an operator provides (name in the volume -> local file)."""
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=haven-deploy-check", "-keyout", key, "-out", cert])
    return {"tls.crt": cert, "tls.key": key, "ca.crt": cert}


def mounted_secret_files(container, volumes):
    """The paths of the files a container's Secret volumes give it: the listed items, or
    the keys of a TLS Secret (cert-manager's tls.crt, tls.key, ca.crt)."""
    paths = set()
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        items = [item["path"] for item in secret.get("items", [])]
        for name in items or ["tls.crt", "tls.key", "ca.crt"]:
            paths.add(f"{mount['mountPath']}/{name}")
    return paths


ADMINS = "networkPolicy.coordinatorFrom[0].namespaceSelector.matchLabels.team"
METRICS = "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name"
OTHER_SITE = "networkPolicy.storageNodeFrom[0].ipBlock.cidr"


def variants():
    """Name -> values of every rendering the chart is checked with."""
    return {
        "default values": {},
        "external etcd, no storage node": {
            "etcd.enabled": "false",
            "etcd.externalEndpoints[0]": "https://etcd-a:2379",
            "storageNode.enabled": "false",
        },
        "json logs at debug": {"logFormat": "json", "logLevel": "debug"},
        "secondary site": {
            "worker.enabled": "false",
            "storageNode.pullSources[0]": "http://primary.example:9000",
        },
        "webhook notifications": {
            "coordinator.notify.webhooks[0].url": "https://hooks.example/haven",
            "coordinator.notify.webhooks[0].events[0]": "job_failed",
            "coordinator.notify.webhooks[0].secretName": "haven-webhook",
            "coordinator.notify.webhooks[1].url": "https://alerts.example/rpo",
        },
        "https storage node with a private CA": {
            "storageNode.tlsSecret": "haven-tls",
            "caConfigMap": "haven-ca",
            "storageNode.pullSources[0]": "https://primary.example:9000",
        },
        "libvirt workers": {
            "worker.mode": "libvirt",
            "worker.libvirt.uri": "qemu:///system",
        },
        "libvirt workers over ssh": {
            "worker.mode": "libvirt",
            "worker.libvirt.uri": "qemu+ssh://root@kvm-1/system",
            "worker.libvirt.sshSecret": "haven-ssh",
        },
        "vCenter worker beside the node workers": {
            **vcenter_values("vc-1", "https://vcenter.example/sdk", caConfigMap="vcenter-ca"),
            **vcenter_values("esx-2", "https://esx-2.example:8443/sdk", caSecret="esx-2-ca"),
            **vcenter_values("vc-3", "https://vc-3.example/sdk"),
            "vcenterWorker.maxJobs": "3",
            "caConfigMap": "haven-ca",
        },
        "hooks: repo init and policies from Git": {
            "repoInit.enabled": "true",
            "repoInit.repositories[0]": "s3://haven/cluster?endpoint=http://demo-storage:9000",
            "policies.enabled": "true",
            "policies.policyToml": "@" + os.path.join(DEPLOY, "compose", "policy.toml"),
        },
        "two storage nodes, repo init over both": {
            "storageNode.nodes": "2",
            "repoInit.enabled": "true",
            "repoInit.repositories[0]": "s3://haven/cluster?endpoint=http://haven-storage-0:9000"
                                        "&endpoint=http://haven-storage-1:9000&replicas=2",
        },
        "policies from an existing ConfigMap": {
            "policies.enabled": "true",
            "policies.existingConfigMap": "haven-policies-from-git",
        },
        "monitoring, admins, the other site": {
            "serviceMonitor.enabled": "true",
            "prometheusRule.enabled": "true",
            ADMINS: "ops",
            METRICS: "monitoring",
            OTHER_SITE: "198.51.100.0/24",
        },
        "one replica each, no snapshots, no NetworkPolicies": {
            "coordinator.replicas": "1",
            "etcd.replicas": "1",
            "etcd.snapshot.enabled": "false",
            "networkPolicy.enabled": "false",
        },
    }


VCENTER_HOSTS = "vcenterWorker.vcenters"


def vcenter_values(name, url, **ca):
    """Values of one more entry of vcenterWorker.vcenters (and the worker enabled)."""
    index = vcenter_values.count
    vcenter_values.count += 1
    entry = {"name": name, "url": url, "credentialsSecret": f"haven-{name}", **ca}
    values = {f"{VCENTER_HOSTS}[{index}].{key}": value for key, value in entry.items()}
    values["vcenterWorker.enabled"] = "true"
    return values


vcenter_values.count = 0


def vcenters_of(values):
    """The vcenterWorker.vcenters entries among --set values, in order."""
    entries = {}
    for key, value in values.items():
        if key.startswith(VCENTER_HOSTS + "["):
            index, field = key[len(VCENTER_HOSTS) + 1:].split("].", 1)
            entries.setdefault(int(index), {})[field] = value
    return [entries[index] for index in sorted(entries)]


def is_node_worker(what):
    """The node workers' DaemonSet: the one pod with the documented exception (the
    vCenter worker is a Deployment held to "restricted" like the others)."""
    return what.startswith("DaemonSet ") and what.endswith("-worker")


def check_objects(docs, values, variant):
    """Pod security, budgets, NetworkPolicies, hooks, etcd and monitoring objects."""
    libvirt = values.get("worker.mode") == "libvirt"
    workers = 0
    for what, pod in pod_security.pod_specs(docs):
        if is_node_worker(what):
            host_paths = ([values.get("worker.libvirt.socketDir", "/run/libvirt"), "/etc/passwd",
                           "/etc/group"] if libvirt else [values.get("worker.qmpDir", "/run/haven/qmp")])
            host_paths.append(values.get("worker.scratchDir", "/var/lib/haven/scratch"))
            fail_on(pod_security.worker_exception(pod, libvirt, host_paths), f"{variant}: {what}")
            workers += 1
            continue
        fail_on(pod_security.restricted(pod), f"{variant}: {what} breaks Pod Security \"restricted\"")
    print(f"ok  {variant}: every pod but the node worker meets Pod Security \"restricted\""
          + ("; the worker only adds root, its host folders"
             + (" and CHOWN, DAC_OVERRIDE" if libvirt else "") if workers else ""))
    fail_on(objects.disruption_budgets(docs, values), f"{variant}: PodDisruptionBudgets")
    if values.get("networkPolicy.enabled", "true") == "true":
        admins = [{"namespaceSelector": {"matchLabels": {"team": values[ADMINS]}}}] \
            if ADMINS in values else []
        metrics = [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": values[METRICS]}}}] if METRICS in values else []
        other_site = [{"ipBlock": {"cidr": values[OTHER_SITE]}}] if OTHER_SITE in values else []
        fail_on(objects.network_policies(docs, values, admins, metrics, other_site),
                f"{variant}: NetworkPolicies")
    elif objects.by_kind(docs, "NetworkPolicy"):
        sys.exit(f"FAILED: {variant}: NetworkPolicies rendered while disabled")
    fail_on(objects.hooks(docs), f"{variant}: hook Jobs")
    fail_on(objects.etcd_settings(docs), f"{variant}: etcd")
    fail_on(objects.probes(docs), f"{variant}: probes")
    fail_on(objects.service_monitors(docs), f"{variant}: ServiceMonitors")
    fail_on(objects.prometheus_rules(docs, RULES), f"{variant}: PrometheusRule")
    crds = [f"{doc['kind']} {doc['metadata']['name']}" for doc in docs if objects.is_crd_kind(doc)]
    counts = {kind: len(objects.by_kind(docs, kind))
              for kind in ("PodDisruptionBudget", "NetworkPolicy", "CronJob", "Job")}
    print(f"ok  {variant}: {counts}; checked field by field: {crds or 'no CRD kinds'}")


def check_chart(haven, helm, workdir):
    env = {"HELM_CACHE_HOME": workdir, "HELM_CONFIG_HOME": workdir, "HELM_DATA_HOME": workdir}
    os.environ.update(env)
    run([helm, "lint", "--strict", CHART])
    print("ok  helm lint --strict")
    check_schema_refuses(helm, workdir)
    scripts.check_etcd_snapshot(ETCD_INIT, ETCD_SNAPSHOT, workdir)
    scripts.check_repo_init(REPO_INIT, haven, workdir)
    provided = make_tls_files(workdir)
    for variant, values in variants().items():
        docs = render(helm, values, workdir)
        print(f"ok  {variant}: {len(docs)} manifests valid for Kubernetes 1.30")
        check_objects(docs, values, variant)
        configmaps = {
            doc["metadata"]["name"]: doc["data"] for doc in docs if doc["kind"] == "ConfigMap"
        }
        containers = 0
        coordinators = 0
        etcd_init = [f"{doc['kind']} {doc['metadata']['name']}" for doc in docs
                     if doc["kind"] == "Job" and "etcd-init" in doc["metadata"]["name"]]
        if values.get("etcd.enabled", "true") == "true":
            check_etcd_init_script(etcd_init)
        if not values:
            # The qmp-mode worker as rendered: its capabilities are enough.
            worker = next(pod for what, pod in pod_security.pod_specs(docs) if is_node_worker(what))
            capabilities = worker["containers"][0]["securityContext"]["capabilities"].get("add", [])
            worker_privileges.check_backup_with(haven, capabilities, workdir)
        for what, pod in pod_security.pod_specs(docs):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                if not container["image"].startswith("haven:"):
                    continue
                script = check_script_container(container, volumes, configmaps, f"{variant}: {what}")
                if script:
                    continue
                # Container paths -> local files: the chart's ConfigMaps are written
                # out; Secrets and ConfigMaps the operator provides get stand-ins.
                files, rendered = {}, []
                for mount in container.get("volumeMounts", []):
                    volume = volumes.get(mount["name"], {})
                    config_map = volume.get("configMap", {}).get("name")
                    if config_map in configmaps:
                        for key, text in configmaps[config_map].items():
                            local = os.path.join(workdir, f"{config_map}-{key}")
                            rendered.append((local, text))
                            files[f"{mount['mountPath']}/{key}"] = local
                    elif any(item.get("path") == "key.toml"
                             for item in volume.get("secret", {}).get("items", [])):
                        files[f"{mount['mountPath']}/key.toml"] = key_file_stand_in(
                            mount["name"], workdir)
                    elif any(item.get("path") == "credentials.toml"
                             for item in volume.get("secret", {}).get("items", [])):
                        files[f"{mount['mountPath']}/credentials.toml"] = \
                            vcenter_credentials_stand_in(mount["name"], workdir)
                    elif config_map or "secret" in volume:
                        for key, local in provided.items():
                            files[f"{mount['mountPath']}/{key}"] = local
                for local, text in rendered:
                    for path, stand_in in files.items():
                        text = text.replace(f'"{path}"', f'"{stand_in}"')
                    with open(local, "w") as file:
                        file.write(text)
                name = what.split(" ", 1)[1]
                pod_env = {"POD_NAME": f"{name}-0", "NODE_NAME": "kvm-1"}
                for item in container.get("env", []):
                    if "value" in item:
                        pod_env[item["name"]] = item["value"]
                    elif "secretKeyRef" in item.get("valueFrom", {}):
                        pod_env[item["name"]] = DUMMY_ENV.get(item["name"], "from-a-secret")
                        if item["name"] == "AWS_ACCESS_KEY_ID" and \
                                item["valueFrom"]["secretKeyRef"]["name"] == "haven-storage":
                            sys.exit(f"FAILED: {name} signs with the storage nodes' admin key")
                what_variant = f"{variant}: {what}"
                role = container["args"][0]
                if role == "policy":
                    check_policy_container(haven, container, files, what_variant)
                    continue
                if role not in HAVEN_ROLES:
                    sys.exit(f"FAILED: {what_variant}: unknown command line {container['args']}")
                args = [files.get(arg, arg) for arg in container["args"]]
                if role in ("worker", "storage-node"):
                    config = container["args"][container["args"].index("--config") + 1]
                    text = next(text for local, text in rendered if files[config] == local)
                    check_storage_keys(text, role, what_variant)
                    if role == "worker" and what.startswith("Deployment "):
                        check_vcenter_hosts(text, values, files, what_variant)
                    elif role == "worker":
                        check_worker_hosts(text, values, what_variant)
                check_haven(haven, args, pod_env, what_variant)
                containers += 1
                if role == "coordinator":
                    config = container["args"][container["args"].index("--config") + 1]
                    text = next(text for local, text in rendered if files[config] == local)
                    check_etcd_security(text, mounted_secret_files(container, volumes), what_variant)
                    coordinators += 1
        if containers == 0 or coordinators == 0:
            sys.exit(f"FAILED: {variant}: no Haven container or no coordinator rendered")


def check_script_container(container, volumes, configmaps, what):
    """A container that runs one of the chart's scripts (etcd-init, etcd-snapshot,
    repo-init): the script it runs is the chart's file, which check_scripts runs for
    real. Returns whether the container is one."""
    command = container.get("command")
    if not command:
        return False
    scripts_by_name = {os.path.basename(path): path for path in (ETCD_INIT, ETCD_SNAPSHOT, REPO_INIT)}
    script = os.path.basename(command[-1])
    mount_dir = os.path.dirname(command[-1])
    if command[0] != "/bin/sh" or script not in scripts_by_name:
        sys.exit(f"FAILED: {what}: unknown command {command}")
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == mount_dir), None)
    config_map = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
    with open(scripts_by_name[script]) as file:
        if configmaps.get(config_map, {}).get(script, "").strip() != file.read().strip():
            sys.exit(f"FAILED: {what}: {command[-1]} is not files/{script}")
    if script == "repo-init.sh" and not container.get("args"):
        sys.exit(f"FAILED: {what}: repo-init.sh is given no repository")
    print(f"ok  {what}: runs files/{script}")
    return True


def check_policy_container(haven, container, files, what):
    """The policies hook: `haven policy apply FILE` of a policy.toml that `haven policy
    apply --check` accepts (an existing ConfigMap gets the example policy.toml), as
    an admin whose certificate is mounted."""
    args = container["args"]
    if args[:2] != ["policy", "apply"] or len(args) != 3:
        sys.exit(f"FAILED: {what}: unexpected command line {args}")
    policy = files.get(args[2], os.path.join(DEPLOY, "compose", "policy.toml"))
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    for variable in ("HAVEN_CA_FILE", "HAVEN_CERT_FILE", "HAVEN_KEY_FILE"):
        if env.get(variable) not in files:
            sys.exit(f"FAILED: {what}: {variable} {env.get(variable)} is not mounted")
    if not env.get("HAVEN_COORDINATOR", "").startswith("https://"):
        sys.exit(f"FAILED: {what}: HAVEN_COORDINATOR is {env.get('HAVEN_COORDINATOR')}")
    out = run([haven, "policy", "apply", policy, "--check"])
    print(f"ok  {what}: haven policy apply --check: {out.strip()}")


def check_worker_hosts(text, values, what):
    """worker.toml's host: the node's libvirt in libvirt mode, its QMP folder otherwise."""
    hosts = tomllib.loads(text)["hosts"]
    if values.get("worker.mode") == "libvirt":
        want = {"name": "${NODE_NAME}", "libvirt": values["worker.libvirt.uri"],
                "qemu_user": "libvirt-qemu"}
    else:
        want = {"name": "${NODE_NAME}", "qmp_dir": values.get("worker.qmpDir", "/run/haven/qmp")}
    if hosts != [want]:
        sys.exit(f"FAILED: {what}: worker.toml hosts {hosts}, expected [{want}]")
    print(f"ok  {what}: worker.toml host {want}")


def check_vcenter_hosts(text, values, files, what):
    """The vCenter worker's worker.toml: one `vcenter` host per vcenterWorker.vcenters
    entry, its credentials file and CA (when one is given) mounted from the Secret and
    ConfigMap or Secret the entry names. `haven worker --check-config` then reads each
    credentials file (check_haven)."""
    hosts = tomllib.loads(text)["hosts"]
    vcenters = vcenters_of(values)
    names = [host.get("name") for host in hosts]
    if names != [vcenter["name"] for vcenter in vcenters]:
        sys.exit(f"FAILED: {what}: worker.toml hosts {names}, expected {vcenters}")
    for host, vcenter in zip(hosts, vcenters):
        has_ca = "caConfigMap" in vcenter or "caSecret" in vcenter
        want = {"name", "vcenter", "vcenter_credentials_file"} | ({"vcenter_ca_file"} if has_ca else set())
        if set(host) != want or host["vcenter"] != vcenter["url"]:
            sys.exit(f"FAILED: {what}: host {host}, expected {sorted(want)} for {vcenter}")
        for key in want - {"name", "vcenter"}:
            if host[key] not in files:
                sys.exit(f"FAILED: {what}: {key} {host[key]} is not mounted")
    print(f"ok  {what}: worker.toml hosts {names}, each vCenter's credentials and CA mounted")


def vcenter_credentials_stand_in(name, workdir):
    """A local vSphere credentials file (user, password) standing in for a Secret's
    credentials.toml."""
    local = os.path.join(workdir, f"{name}.toml")
    with open(local, "w") as file:
        file.write(f'user = "backup-{name}@vsphere.local"\npassword = "example"\n')
    return local


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--haven", required=True, help="the haven binary to check against")
    parser.add_argument("--helm", default="helm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-deploy-check-") as workdir:
        check_compose(os.path.abspath(args.haven), workdir)
        check_chart(os.path.abspath(args.haven), args.helm, workdir)
    print("deploy/: all checks passed")


if __name__ == "__main__":
    main()
