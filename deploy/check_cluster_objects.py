"""Checks of the chart's cluster objects beyond their schemas, for deploy/check.py:
PodDisruptionBudgets, NetworkPolicies (who reaches what), hook Jobs, etcd's
settings, and the Prometheus Operator's kinds (ServiceMonitor, PrometheusRule),
which `kubernetes-validate` has no schema for and which are checked field by field
here instead. Each function returns its list of problems.
"""

import yaml

from check_pod_security import pod_specs

# Kinds of CustomResourceDefinitions the chart renders: not in Kubernetes' schemas.
CRD_GROUPS = ("monitoring.coreos.com/",)


def is_crd_kind(doc):
    return doc["apiVersion"].startswith(CRD_GROUPS)


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(docs):
    """{component: pod template labels} of every workload."""
    found = {}
    for doc in docs:
        for _ in pod_specs([doc]):
            template = (doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob"
                        else doc["spec"]["template"])
            labels = template["metadata"]["labels"]
            found[labels["app.kubernetes.io/component"]] = labels
    return found


def by_kind(docs, kind):
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def disruption_budgets(docs, values):
    """A budget of maxUnavailable 1 selecting the pods of each component with more
    than one replica (coordinators, etcd), and none for one-pod components."""
    problems = []
    labels = pod_labels(docs)
    budgets = by_kind(docs, "PodDisruptionBudget").values()
    replicas = {doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]:
                doc["spec"].get("replicas", 1) for doc in docs if doc["kind"] == "StatefulSet"}
    for component, count in replicas.items():
        covering = [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], labels[component])]
        want = 1 if count > 1 and values.get("podDisruptionBudget.enabled", "true") == "true" else 0
        if len(covering) != want:
            problems.append(f"{component} ({count} replicas) has {len(covering)} budgets, expected {want}")
        for budget in covering:
            if budget["spec"].get("maxUnavailable") != 1 or "minAvailable" in budget["spec"]:
                problems.append(f"budget {budget['metadata']['name']} is not maxUnavailable: 1")
    return problems


def _sources(policy, port, labels, problems):
    """The components a NetworkPolicy lets reach `port` (by the component label of
    each pod selector, which must also select that component's rendered pods), and
    the other peers it lets in (namespace selectors, address blocks)."""
    components, others = set(), []
    for rule in policy["spec"].get("ingress", []):
        if not any(p.get("port") == port for p in rule.get("ports", [])):
            continue
        for peer in rule.get("from", []):
            if set(peer) != {"podSelector"}:
                others.append(peer)
                continue
            selector = peer["podSelector"].get("matchLabels", {})
            component = selector.get("app.kubernetes.io/component")
            if set(selector) != {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                 "app.kubernetes.io/component"}:
                problems.append(f"pod selector {selector} is not one component of the release")
            elif component in labels and not matches(selector, labels[component]):
                problems.append(f"pod selector {selector} misses the {component} pods")
            components.add(component)
    return components, others


def network_policies(docs, values, admins, metrics, other_site):
    """Each component reachable only by the peers the brief names: the coordinators'
    gRPC by workers (node and vCenter), the policies hook and `admins`; etcd's clients
    by coordinators and the etcd Jobs, its peers by its members; the storage node by
    workers, coordinators, repo-init, `other_site` and `metrics`; workers by nobody."""
    problems = []
    labels = pod_labels(docs)
    policies = by_kind(docs, "NetworkPolicy").values()
    expected = {
        "coordinator": {int(values.get("coordinator.grpcPort", 7700)):
                        ({"worker", "vcenter-worker", "policies"}, admins),
                        int(values.get("coordinator.httpPort", 7701)): (set(), admins + metrics)},
        "etcd": {2379: ({"coordinator", "etcd-init", "etcd-snapshot"}, []),
                 2380: ({"etcd"}, []), 2381: (set(), metrics)},
        "storage-node": {int(values.get("storageNode.port", 9000)):
                         ({"worker", "vcenter-worker", "coordinator", "repo-init"},
                          other_site + metrics)},
        "worker": {},
        "vcenter-worker": {},
    }
    for component, ports in expected.items():
        if component not in labels:
            continue
        selecting = [p for p in policies if matches(p["spec"]["podSelector"]["matchLabels"], labels[component])]
        if len(selecting) != 1:
            problems.append(f"{component}: {len(selecting)} NetworkPolicies select its pods, expected 1")
            continue
        policy = selecting[0]
        if policy["spec"].get("policyTypes") != ["Ingress"]:
            problems.append(f"{component}: policyTypes {policy['spec'].get('policyTypes')}")
        opened = {p.get("port") for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
        wanted = {port for port, (pods, peers) in ports.items() if pods or peers}
        if opened != wanted:
            problems.append(f"{component}: ports {sorted(opened)} open, expected {sorted(wanted)}")
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("ports") or not rule.get("from"):
                problems.append(f"{component}: an ingress rule without ports or sources admits everyone")
        for port, (pods, peers) in ports.items():
            got, other = _sources(policy, port, labels, problems)
            if got != pods or other != peers:
                problems.append(f"{component} port {port}: reached by {sorted(got)} and {other}, "
                                f"expected {sorted(pods)} and {peers}")
    return problems


def hooks(docs):
    """Hook Jobs run after install and upgrade, in order: etcd-init, repo-init,
    policies."""
    problems = []
    order = []
    for doc in docs:
        if doc["kind"] != "Job":
            continue
        annotations = doc["metadata"].get("annotations", {})
        if annotations.get("helm.sh/hook") != "post-install,post-upgrade":
            problems.append(f"Job {doc['metadata']['name']} is not a post-install,post-upgrade hook")
            continue
        component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        order.append((int(annotations.get("helm.sh/hook-weight", "0")), component))
    components = [c for _, c in sorted(order)]
    wanted = [c for c in ("etcd-init", "repo-init", "policies") if c in components]
    if components != wanted:
        problems.append(f"hook Jobs run in the order {components}, expected {wanted}")
    return problems


def etcd_settings(docs):
    """etcd compacts its own history, has a quota, and serves /health to its probes."""
    problems = []
    for doc in docs:
        if doc["kind"] != "StatefulSet" or not doc["metadata"]["name"].endswith("-etcd"):
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        flags = dict(arg.split("=", 1) for arg in container["command"][1:] if "=" in arg)
        if flags.get("--auto-compaction-mode") != "periodic" or not flags.get("--auto-compaction-retention"):
            problems.append("etcd does not compact its history (--auto-compaction-*)")
        if int(flags.get("--quota-backend-bytes", "0")) <= 0:
            problems.append("etcd has no --quota-backend-bytes")
        if not flags.get("--listen-metrics-urls") or "readinessProbe" not in container:
            problems.append("etcd has no readiness probe on its metrics listener")
    return problems


def probes(docs):
    """Coordinators: alive on /healthz, ready on /readyz (its store answers and a
    leader is known), both over https; the storage node has a readiness probe."""
    problems = []
    for doc in docs:
        if doc["kind"] != "StatefulSet":
            continue
        component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        if component == "coordinator":
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = container.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("scheme") != "HTTPS":
                    problems.append(f"coordinator {probe} is not HTTPS {path}: {get}")
        elif "readinessProbe" not in container:
            problems.append(f"{component} has no readiness probe")
    return problems


def service_monitors(docs):
    """Each ServiceMonitor selects a Service of the chart whose ports include every
    endpoint's port; a coordinator's scrape is https with a client certificate."""
    problems = []
    services = by_kind(docs, "Service").values()
    for monitor in by_kind(docs, "ServiceMonitor").values():
        name = monitor["metadata"]["name"]
        if monitor["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"ServiceMonitor {name}: apiVersion {monitor['apiVersion']}")
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services if matches(selector, s["metadata"].get("labels", {}))]
        if len(selected) != 1:
            problems.append(f"ServiceMonitor {name} selects {len(selected)} Services, expected 1")
            continue
        ports = {p["name"] for p in selected[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            unknown = set(endpoint) - {"port", "path", "scheme", "interval", "tlsConfig"}
            if unknown:
                problems.append(f"ServiceMonitor {name}: unknown endpoint fields {sorted(unknown)}")
            if endpoint.get("port") not in ports:
                problems.append(f"ServiceMonitor {name}: port {endpoint.get('port')} not in {sorted(ports)}")
            if endpoint.get("path") != "/metrics" or endpoint.get("scheme") not in ("http", "https"):
                problems.append(f"ServiceMonitor {name}: scrapes {endpoint.get('scheme')} {endpoint.get('path')}")
            if "coordinator" in name:
                tls = endpoint.get("tlsConfig", {})
                if endpoint.get("scheme") != "https" or not tls.get("serverName") or \
                        {"ca", "cert", "keySecret"} - set(tls) or tls.get("insecureSkipVerify"):
                    problems.append(f"ServiceMonitor {name}: not https with a CA, a client "
                                    "certificate and a server name")
    return problems


def prometheus_rules(docs, rules_file):
    """The PrometheusRule carries the rules of `rules_file`, each group named with
    alerts or recordings that have an expression."""
    problems = []
    with open(rules_file) as file:
        want = yaml.safe_load(file)
    for rule in by_kind(docs, "PrometheusRule").values():
        groups = rule["spec"].get("groups", [])
        if rule["spec"] != want:
            problems.append(f"PrometheusRule {rule['metadata']['name']} differs from {rules_file}")
        for group in groups:
            if not group.get("name") or not group.get("rules"):
                problems.append(f"PrometheusRule group {group.get('name')} is empty")
            for entry in group.get("rules", []):
                if not entry.get("expr") or not (entry.get("alert") or entry.get("record")):
                    problems.append(f"PrometheusRule group {group['name']}: a rule lacks expr or alert/record")
    return problems
