"""The Pod Security Standards' "restricted" level, checked over rendered pod specs
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), and the
worker's documented exception: what deploy/check.py holds every chart pod to.

Each function returns the list of violations, so a failure names every rule broken.
"""

# Volume types "restricted" allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
# Baseline's safe sysctls.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def pod_specs(docs):
    """(what, pod spec) of every workload among the rendered documents."""
    for doc in docs:
        kind = doc["kind"]
        what = f"{kind} {doc['metadata']['name']}"
        if kind in ("StatefulSet", "DaemonSet", "Deployment", "ReplicaSet", "Job"):
            yield what, doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield what, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield what, doc["spec"]


def all_containers(pod):
    return [*pod.get("initContainers", []), *pod["containers"],
            *pod.get("ephemeralContainers", [])]


def host_namespaces(pod):
    """Baseline: no host namespaces, host ports or privileged containers."""
    problems = [f"{field}: true" for field in ("hostNetwork", "hostPID", "hostIPC")
                if pod.get(field)]
    for container in all_containers(pod):
        name = container["name"]
        context = container.get("securityContext", {})
        if context.get("privileged"):
            problems.append(f"container {name} is privileged")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"container {name} uses a hostPort")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"container {name} sets procMount")
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"container {name} is a hostProcess")
    for sysctl in pod.get("securityContext", {}).get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    return problems


def hardened_containers(pod, allowed_capabilities=("NET_BIND_SERVICE",)):
    """What every chart container keeps, the worker's too: no privilege escalation,
    every capability dropped (only `allowed_capabilities` added), seccomp
    RuntimeDefault or Localhost, and a read-only root file system."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for container in all_containers(pod):
        name = container["name"]
        context = container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"container {name}: capabilities do not drop ALL")
        added = set(capabilities.get("add", [])) - set(allowed_capabilities)
        if added:
            problems.append(f"container {name}: adds capabilities {sorted(added)}")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name}: seccomp profile is {seccomp.get('type')}, "
                            "not RuntimeDefault or Localhost")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name}: root file system is writable")
    return problems


def restricted(pod):
    """Every violation of the "restricted" level by one pod spec."""
    problems = host_namespaces(pod) + hardened_containers(pod)
    pod_context = pod.get("securityContext", {})
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is {sorted(kinds)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    for container in all_containers(pod):
        name = container["name"]
        context = container.get("securityContext", {})
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"container {name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"container {name} runs as uid 0")
    return problems


def worker_exception(pod, libvirt, host_paths):
    """The worker: above "restricted" only by running as root and mounting exactly
    `host_paths` (the hypervisor's folders); in libvirt mode it adds CHOWN and
    DAC_OVERRIDE and nothing else, in qmp mode no capability at all."""
    allowed = ("CHOWN", "DAC_OVERRIDE") if libvirt else ()
    problems = host_namespaces(pod) + hardened_containers(pod, allowed)
    mounted = {volume["hostPath"]["path"] for volume in pod.get("volumes", [])
               if "hostPath" in volume}
    if mounted != set(host_paths):
        problems.append(f"host paths {sorted(mounted)}, expected {sorted(host_paths)}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES | {"hostPath"}:
            problems.append(f"volume {volume['name']} is {sorted(kinds)}")
    for container in all_containers(pod):
        added = set(container.get("securityContext", {}).get("capabilities", {}).get("add", []))
        if libvirt and added != set(allowed):
            problems.append(f"container {container['name']}: libvirt mode adds {sorted(added)}, "
                            f"expected {sorted(allowed)}")
    return problems
