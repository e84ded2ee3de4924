#!/usr/bin/env python3
"""Validates rendered Rally manifests (the output of `kubectl kustomize`) against what rallyd does.

    check_manifests.py [--label NAME] [--secrets external|dev]
                       [--tls required|from-overlay|as-configured] FILE...   (FILE may be -)
    check_manifests.py --self-test
    check_manifests.py --list-rules

Exits 1 with one line per violation, 0 when every rule holds. RALLYD_BIN, when set, names a
rallyd binary whose `--help` lists the flags and RALLY_* variables the manifests may use; unset,
that rule is skipped with a message. `--secrets external` (base, prod): no Secret carries data,
the referenced ones must exist in the cluster. `--secrets dev`: the output is self-contained, so
every referenced Secret and key is in it, and every Secret is marked dev-only. `--tls required`
(prod): identity, rooms and broker serve gRPC over TLS from a mounted Secret; `--tls
from-overlay` (base): plaintext beyond loopback is the overlays' to allow or replace; by default
plaintext beyond loopback must be allowed explicitly, as rallyd demands.

The rallyd-* rules, and what they assume of rallyd, are in rallyd_rules.py; the self-test in
check_manifests_selftest.py.
"""

import os
import sys

try:
    import yaml
except ImportError:  # check.sh installs PyYAML into a virtual environment
    sys.exit("check_manifests: PyYAML is required (pip install pyyaml)")

from rallyd_rules import Help, RallydRules  # noqa: E402 (after the PyYAML check)

RULES = {
    "parse": "every document is a Kubernetes object with apiVersion, kind and metadata.name",
    "probes": "every container has a liveness and a readiness probe",
    "resources": "every container requests and limits cpu and memory, requests <= limits",
    "labels": "app.kubernetes.io/name and part-of on every object (one part-of value); component "
    "on workloads, pod templates, Services, HPAs and PDBs, equal to the pods they are about",
    "selectors": "a workload's selector picks its own pod template and no other workload's pods",
    "services": "a Service selects the pods of exactly one workload of the same name, and each "
    "targetPort is a port of those pods with the same protocol",
    "statefulsets": "a StatefulSet's serviceName is a Service that selects it",
    "hpa": "an HPA targets an existing Deployment of the same name, min <= replicas <= max, and "
    "that Deployment has a PDB",
    "pdb": "a PDB selects the pods of exactly one workload of the same name and never blocks "
    "every eviction",
    "references": "ConfigMaps and ServiceAccounts a pod names exist; with --secrets dev, so do "
    "its Secrets and their keys",
    "secrets": "with --secrets external no Secret carries data; with --secrets dev every Secret "
    "is labelled rally/dev-only=true",
    "security": "non-root pods without a service account token; containers without privilege "
    "escalation, with a read-only root filesystem and no capabilities",
    "images": "every image has a tag (not latest) or a digest",
    "rallyd-services": "a rallyd container names its services explicitly, with known values",
    "rallyd-ports": "the grpc containerPort is --listen's port (not loopback); each "
    "--relay-listen port is a UDP containerPort (not loopback)",
    "rallyd-probes": "rallyd's probes are gRPC probes on --health-listen's port (else --listen's), "
    "never on a TLS port, for a service it serves",
    "rallyd-tls": "TLS certificate and key come together, as files of mounted Secrets; plaintext "
    "beyond loopback only with --allow-plaintext; with --tls required, identity, rooms and "
    "broker serve TLS",
    "rallyd-least-privilege": "the private token-signing key only where identity runs, the relay "
    "secret only where the broker or the relay runs, the database URL only where a store is "
    "used",
    "rallyd-shutdown": "terminationGracePeriodSeconds exceeds preStop sleep plus "
    "--shutdown-grace-secs",
    "rallyd-secrets": "the database URL comes from a Secret; identity's signing key, rooms' and "
    "the broker's public verify keys, the relay secret for broker and relay, and any older keys "
    "are files of mounted Secrets",
    "rallyd-relay-address": "a broker without a relay announces a public relay address whose "
    "port is a port or nodePort of a UDP Service in front of a relay's listen port",
    "rallyd-flags": "every flag in args and RALLY_* variable given to rallyd exists in "
    "`$RALLYD_BIN --help`",
}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
DEV_ONLY = "rally/dev-only"

def cpu_millis(quantity):
    text = str(quantity)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def memory_bytes(quantity):
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def labels_of(obj):
    return (obj.get("metadata") or {}).get("labels") or {}


def ident(obj):
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


class Checker(RallydRules):
    """Every rule over one rendering; the rallyd-* ones come from RallydRules."""

    matches = staticmethod(matches)
    ident = staticmethod(ident)

    def __init__(self, docs, secrets_mode="external", help_=None, tls_mode="as-configured"):
        self.docs = docs
        self.secrets_mode = secrets_mode
        self.tls_mode = tls_mode
        self.tls_left_to_overlays = False
        self.signing_secrets = set()  # Secrets holding the private token-signing key
        self.relay_secrets = set()  # Secrets holding the relay grant secret
        self.help = help_
        self.violations = []
        self.notes = []
        self.objects = []
        self.external_secrets = {}  # name -> keys read, for the report

    # -- plumbing -----------------------------------------------------------------------------
    def fail(self, rule, where, message):
        self.violations.append((rule, f"[{rule}] {where}: {message}"))

    def of_kind(self, *kinds):
        return [o for o in self.objects if o.get("kind") in kinds]

    def find(self, kind, name):
        for obj in self.objects:
            if obj.get("kind") == kind and obj["metadata"].get("name") == name:
                return obj
        return None

    def workloads(self):
        return self.of_kind(*WORKLOAD_KINDS)

    @staticmethod
    def pod_spec(workload):
        return ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}

    @staticmethod
    def pod_labels(workload):
        return labels_of((workload.get("spec") or {}).get("template") or {})

    def selected(self, selector):
        return [w for w in self.workloads() if matches(selector, self.pod_labels(w))]

    def containers(self, workload, init=False):
        spec = self.pod_spec(workload)
        found = list(spec.get("containers") or [])
        return found + list(spec.get("initContainers") or []) if init else found

    def config_maps(self):
        return {o["metadata"]["name"]: o for o in self.of_kind("ConfigMap")}

    # -- the run ------------------------------------------------------------------------------
    def run(self):
        for index, doc in enumerate(self.docs):
            if doc is None:
                continue
            if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion") \
                    or not (doc.get("metadata") or {}).get("name"):
                self.fail("parse", f"document {index + 1}", "not a named Kubernetes object")
                continue
            self.objects.append(doc)
        if not self.objects:
            self.fail("parse", "input", "no Kubernetes objects")
        for check in (self.check_labels, self.check_selectors, self.check_services,
                      self.check_statefulsets, self.check_hpas, self.check_pdbs,
                      self.check_secrets, self.check_references, self.check_containers,
                      self.check_rallyd):
            check()
        return self.violations

    def check_labels(self):
        part_of = {}
        for obj in self.objects:
            labels = labels_of(obj)
            for key in (NAME, PART_OF):
                if not labels.get(key):
                    self.fail("labels", ident(obj), f"no {key} label")
            if labels.get(PART_OF):
                part_of.setdefault(labels[PART_OF], ident(obj))
            if obj["kind"] in WORKLOAD_KINDS + ("Service", "HorizontalPodAutoscaler",
                                                "PodDisruptionBudget") \
                    and not labels.get(COMPONENT):
                self.fail("labels", ident(obj), f"no {COMPONENT} label")
        if len(part_of) > 1:
            self.fail("labels", "objects", f"several {PART_OF} values: {sorted(part_of)}")
        for workload in self.workloads():
            pod = self.pod_labels(workload)
            for key in (NAME, COMPONENT, PART_OF):
                if not pod.get(key):
                    self.fail("labels", ident(workload), f"pod template has no {key} label")
                elif labels_of(workload).get(key) not in (None, pod[key]):
                    self.fail("labels", ident(workload),
                              f"{key} is {labels_of(workload)[key]!r} on the workload but "
                              f"{pod[key]!r} on its pods")

    def check_selectors(self):
        for workload in self.workloads():
            selector = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if not selector or not matches(selector, self.pod_labels(workload)):
                self.fail("selectors", ident(workload),
                          "selector.matchLabels missing or not matching its own pod template")
                continue
            for key in (NAME, COMPONENT):
                if key not in selector:
                    self.fail("selectors", ident(workload), f"selector does not use {key}")
            for other in self.workloads():
                if other is not workload and matches(selector, self.pod_labels(other)):
                    self.fail("selectors", ident(workload),
                              f"its selector also picks the pods of {ident(other)}")

    def pod_ports(self, workload):
        ports = []
        for container in self.containers(workload):
            for port in container.get("ports") or []:
                ports.append((port.get("name"), port.get("containerPort"),
                              port.get("protocol", "TCP")))
        return ports

    def check_services(self):
        for service in self.of_kind("Service"):
            spec = service.get("spec") or {}
            selector = spec.get("selector")
            if not selector:
                self.fail("services", ident(service), "no selector")
                continue
            targets = self.selected(selector)
            if len(targets) != 1:
                self.fail("services", ident(service),
                          f"selects the pods of {len(targets)} workloads, not one: "
                          f"{[ident(t) for t in targets]}")
                continue
            target = targets[0]
            if target["metadata"]["name"] != service["metadata"]["name"]:
                self.fail("services", ident(service), f"selects {ident(target)}: names differ")
            self.same_component("services", service, target)
            ports = self.pod_ports(target)
            for port in spec.get("ports") or []:
                protocol = port.get("protocol", "TCP")
                wanted = port.get("targetPort", port.get("port"))
                if not any((wanted in (name, number)) and proto == protocol
                           for name, number, proto in ports):
                    self.fail("services", ident(service),
                              f"targetPort {wanted!r}/{protocol} is no port of {ident(target)}")

    def same_component(self, rule, obj, workload):
        mine = labels_of(obj).get(COMPONENT)
        theirs = self.pod_labels(workload).get(COMPONENT)
        if mine and theirs and mine != theirs:
            self.fail(rule, ident(obj),
                      f"component {mine!r} but it is about {ident(workload)} ({theirs!r})")

    def check_statefulsets(self):
        for sts in self.of_kind("StatefulSet"):
            name = (sts.get("spec") or {}).get("serviceName")
            service = self.find("Service", name) if name else None
            if service is None:
                self.fail("statefulsets", ident(sts), f"serviceName {name!r} is no Service")
            elif not matches((service.get("spec") or {}).get("selector"), self.pod_labels(sts)):
                self.fail("statefulsets", ident(sts), f"Service {name} does not select it")

    def pdbs_of(self, workload):
        return [p for p in self.of_kind("PodDisruptionBudget")
                if matches(((p.get("spec") or {}).get("selector") or {}).get("matchLabels"),
                           self.pod_labels(workload))]

    def check_hpas(self):
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            spec = hpa.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            target = self.find(ref.get("kind"), ref.get("name"))
            if ref.get("kind") != "Deployment" or target is None:
                self.fail("hpa", ident(hpa), f"targets {ref.get('kind')}/{ref.get('name')}, "
                          "which is no Deployment here")
                continue
            if target["metadata"]["name"] != hpa["metadata"]["name"]:
                self.fail("hpa", ident(hpa), f"targets {ident(target)}: names differ")
            self.same_component("hpa", hpa, target)
            low, high = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
            replicas = (target.get("spec") or {}).get("replicas", 1)
            if not 1 <= low <= high:
                self.fail("hpa", ident(hpa), f"minReplicas {low} / maxReplicas {high}")
            elif not low <= replicas <= high:
                self.fail("hpa", ident(hpa),
                          f"{ident(target)} has {replicas} replicas, outside {low}..{high}")
            if not self.pdbs_of(target):
                self.fail("hpa", ident(hpa), f"{ident(target)} has no PodDisruptionBudget")

    def check_pdbs(self):
        for pdb in self.of_kind("PodDisruptionBudget"):
            spec = pdb.get("spec") or {}
            targets = self.selected((spec.get("selector") or {}).get("matchLabels"))
            if len(targets) != 1:
                self.fail("pdb", ident(pdb), f"selects the pods of {len(targets)} workloads, "
                          f"not one: {[ident(t) for t in targets]}")
                continue
            target = targets[0]
            if target["metadata"]["name"] != pdb["metadata"]["name"]:
                self.fail("pdb", ident(pdb), f"selects {ident(target)}: names differ")
            self.same_component("pdb", pdb, target)
            replicas = (target.get("spec") or {}).get("replicas", 1)
            if ("minAvailable" in spec) == ("maxUnavailable" in spec):
                self.fail("pdb", ident(pdb), "needs exactly one of minAvailable, maxUnavailable")
            elif spec.get("maxUnavailable") in (0, "0%") or (
                    isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= replicas):
                self.fail("pdb", ident(pdb), f"allows no eviction of {ident(target)} "
                          f"({replicas} replicas): node drains would hang")

    def check_secrets(self):
        for secret in self.of_kind("Secret"):
            carries = bool(secret.get("data") or secret.get("stringData"))
            if self.secrets_mode == "external" and carries:
                self.fail("secrets", ident(secret), "carries data: Secrets are created in the "
                          "cluster, never committed (only the dev overlay generates them)")
            if self.secrets_mode == "dev" and labels_of(secret).get(DEV_ONLY) != "true":
                self.fail("secrets", ident(secret), f"not labelled {DEV_ONLY}=true")

    def secret_refs(self, workload):
        """(secret name, key or None, where) of everything the pod reads from Secrets."""
        refs = []
        spec = self.pod_spec(workload)
        for container in self.containers(workload, init=True):
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    refs.append((source["secretRef"].get("name"), None, container.get("name")))
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append((ref.get("name"), ref.get("key"), container.get("name")))
        for volume in spec.get("volumes") or []:
            sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources") or []]
            for source in sources:
                if "secret" in source:
                    name = source["secret"].get("secretName") or source["secret"].get("name")
                    items = source["secret"].get("items") or []
                    for item in items or [{"key": None}]:
                        refs.append((name, item.get("key"), f"volume {volume.get('name')}"))
        return refs

    def check_references(self):
        maps = self.config_maps()
        for workload in self.workloads():
            spec = self.pod_spec(workload)
            account = spec.get("serviceAccountName")
            if account and not self.find("ServiceAccount", account):
                self.fail("references", ident(workload), f"ServiceAccount {account} is not here")
            for container in self.containers(workload, init=True):
                names = [s["configMapRef"].get("name") for s in container.get("envFrom") or []
                         if "configMapRef" in s]
                names += [(e.get("valueFrom") or {})["configMapKeyRef"].get("name")
                          for e in container.get("env") or []
                          if "configMapKeyRef" in (e.get("valueFrom") or {})]
                for name in names:
                    if name not in maps:
                        self.fail("references", ident(workload), f"ConfigMap {name} is not here")
            for volume in spec.get("volumes") or []:
                name = (volume.get("configMap") or {}).get("name")
                if name and name not in maps:
                    self.fail("references", ident(workload), f"ConfigMap {name} is not here")
            for name, key, where in self.secret_refs(workload):
                secret = self.find("Secret", name)
                if self.secrets_mode == "external":
                    self.external_secrets.setdefault(name, set()).update([key] if key else [])
                elif secret is None:
                    self.fail("references", ident(workload), f"{where} reads Secret {name}, "
                              "which is not here (--secrets dev: the output is self-contained)")
                elif key is not None and key not in {**(secret.get("data") or {}),
                                                     **(secret.get("stringData") or {})}:
                    self.fail("references", ident(workload),
                              f"{where} reads key {key} of Secret {name}, which has none")

    def check_containers(self):
        for workload in self.workloads():
            spec = self.pod_spec(workload)
            pod_security = spec.get("securityContext") or {}
            if spec.get("automountServiceAccountToken") is not False:
                self.fail("security", ident(workload),
                          "automountServiceAccountToken is not false")
            for container in self.containers(workload, init=True):
                where = f"{ident(workload)} container {container.get('name')}"
                is_init = container in (spec.get("initContainers") or [])
                if not is_init:
                    for probe in ("livenessProbe", "readinessProbe"):
                        if not container.get(probe):
                            self.fail("probes", where, f"no {probe}")
                self.check_resources(where, container.get("resources") or {})
                security = container.get("securityContext") or {}
                non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
                user = security.get("runAsUser", pod_security.get("runAsUser"))
                if non_root is not True or user == 0:
                    self.fail("security", where, "not forced to run as non-root")
                if security.get("allowPrivilegeEscalation") is not False:
                    self.fail("security", where, "allowPrivilegeEscalation is not false")
                if security.get("privileged"):
                    self.fail("security", where, "privileged")
                if security.get("readOnlyRootFilesystem") is not True:
                    self.fail("security", where, "root filesystem is not read-only")
                if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                    self.fail("security", where, "capabilities do not drop ALL")
                image = str(container.get("image", ""))
                last = image.rsplit("/", 1)[-1]
                if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
                    self.fail("images", where, f"image {image!r} has no fixed tag or digest")

    def check_resources(self, where, resources):
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if (resources.get(part) or {}).get(resource) in (None, ""):
                    self.fail("resources", where, f"no {part}.{resource}")
        for resource, measure in (("cpu", cpu_millis), ("memory", memory_bytes)):
            request = (resources.get("requests") or {}).get(resource)
            limit = (resources.get("limits") or {}).get(resource)
            if request is not None and limit is not None:
                try:
                    if measure(request) > measure(limit):
                        self.fail("resources", where, f"{resource} request {request} exceeds "
                                  f"its limit {limit}")
                except ValueError:
                    self.fail("resources", where, f"unreadable {resource} {request}/{limit}")


def load(paths):
    docs = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        try:
            docs.extend(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            sys.exit(f"check_manifests: {path} is not YAML: {error}")
    return docs


def main(argv):
    args = list(argv)
    if "--self-test" in args:
        import check_manifests_selftest

        return check_manifests_selftest.run()
    if "--list-rules" in args:
        for rule, text in RULES.items():
            print(f"{rule}: {text}")
        return 0
    label, mode, tls_mode, paths = "manifests", "external", "as-configured", []
    while args:
        arg = args.pop(0)
        if arg == "--label" and args:
            label = args.pop(0)
        elif arg == "--secrets" and args and args[0] in ("external", "dev"):
            mode = args.pop(0)
        elif arg == "--tls" and args and args[0] in ("required", "from-overlay", "as-configured"):
            tls_mode = args.pop(0)
        elif arg.startswith("--"):
            print(__doc__, file=sys.stderr)
            return 2
        else:
            paths.append(arg)
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    binary = os.environ.get("RALLYD_BIN")
    help_ = Help.from_binary(binary) if binary else None
    checker = Checker(load(paths), mode, help_, tls_mode)
    violations = checker.run()
    if checker.tls_left_to_overlays:
        checker.notes.append("gRPC beyond loopback without TLS or --allow-plaintext: each "
                             "overlay chooses one (--tls from-overlay)")
    for note in checker.notes:
        print(f"check_manifests [{label}]: note: {note}")
    if checker.external_secrets:
        wanted = "; ".join(f"{name} (keys: {', '.join(sorted(keys)) or 'any'})"
                           for name, keys in sorted(checker.external_secrets.items()))
        print(f"check_manifests [{label}]: Secrets to create in the cluster: {wanted}")
    kinds = {}
    for obj in checker.objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    rules = len(RULES) - (1 if help_ is None else 0)
    if violations:
        for _, line in violations:
            print(f"check_manifests [{label}]: FAIL {line}")
        print(f"check_manifests [{label}]: {len(violations)} violation(s) in {summary}")
        return 1
    print(f"check_manifests [{label}]: ok, {rules} rules hold for {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
