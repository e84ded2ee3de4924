"""The self-test of check_manifests.py (`check_manifests.py --self-test`).

A small set of manifests that satisfies every rule, then one broken copy per case: each must be
caught by the rule named. The set passes as it is, in both secrets modes, so a rule that fires
on good manifests fails the self-test too. rallyd's --help is a fixed excerpt here, so the
flags rule is tested without a binary.
"""

import copy
import json
import textwrap

import yaml

import check_manifests as cm
import rallyd_rules

GOOD = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: rally, labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/part-of: rally}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: rally-config, labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/part-of: rally}}
data:
  RALLY_LISTEN: 0.0.0.0:7370
  RALLY_HEALTH_LISTEN: 0.0.0.0:7372
  RALLY_RELAY_SECRET_FILE: /etc/rally/relay/relay-grant-secret
  RALLY_RELAY_PUBLIC_ADDRESSES: 198.18.0.1:7371
  RALLY_SHUTDOWN_GRACE_SECS: "10"
  RALLY_LOG: info
---
apiVersion: apps/v1
kind: Deployment
metadata: &meta
  name: rally-identity
  labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: identity,
           app.kubernetes.io/part-of: rally}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: identity}}
  template:
    metadata: {labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: identity,
                        app.kubernetes.io/part-of: rally}}
    spec: &pod
      serviceAccountName: rally
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
        - &rallyd
          name: rallyd
          image: rallyd:0.1.0
          args: ["--services", "identity"]
          envFrom: [{configMapRef: {name: rally-config}}]
          env:
            - {name: RALLY_DATABASE_URL, valueFrom: {secretKeyRef: {name: rally-database, key: url}}}
            - {name: RALLY_TOKEN_KEY_FILE, value: /etc/rally/token/token-signing-key.pem}
            - {name: RALLY_TLS_CERT_FILE, value: /etc/rally/tls/tls.crt}
            - {name: RALLY_TLS_KEY_FILE, value: /etc/rally/tls/tls.key}
          ports: [{name: grpc, containerPort: 7370, protocol: TCP},
                  {name: health, containerPort: 7372, protocol: TCP}]
          readinessProbe: {grpc: {port: 7372, service: rally.identity.v1.Identity}}
          livenessProbe: {grpc: {port: 7372}}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: "1", memory: 128Mi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true,
                            capabilities: {drop: [ALL]}}
          volumeMounts: [{name: token-key, mountPath: /etc/rally/token, readOnly: true},
                         {name: tls, mountPath: /etc/rally/tls, readOnly: true}]
      volumes:
        - {name: token-key, secret: {secretName: rally-token-key}}
        - {name: tls, secret: {secretName: rally-tls}}
---
apiVersion: v1
kind: Service
metadata: *meta
spec:
  selector: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: identity}
  ports: [{name: grpc, port: 7370, targetPort: grpc}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: *meta
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: rally-identity}
  minReplicas: 2
  maxReplicas: 4
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: *meta
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: identity}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rally-broker
  labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: broker,
           app.kubernetes.io/part-of: rally}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: broker}}
  template:
    metadata: {labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: broker,
                        app.kubernetes.io/part-of: rally}}
    spec:
      <<: *pod
      containers:
        - <<: *rallyd
          args: ["--services=broker"]
          env:
            - {name: RALLY_DATABASE_URL, valueFrom: {secretKeyRef: {name: rally-database, key: url}}}
            - {name: RALLY_TOKEN_VERIFY_KEYS, value: /etc/rally/token-verify/token-verify-key.pem}
            - {name: RALLY_TLS_CERT_FILE, value: /etc/rally/tls/tls.crt}
            - {name: RALLY_TLS_KEY_FILE, value: /etc/rally/tls/tls.key}
          readinessProbe: {grpc: {port: 7372, service: rally.broker.v1.Broker}}
          volumeMounts:
            - {name: token-verify-key, mountPath: /etc/rally/token-verify}
            - {name: relay-secret, mountPath: /etc/rally/relay}
            - {name: tls, mountPath: /etc/rally/tls}
      volumes:
        - {name: token-verify-key, secret: {secretName: rally-token-verify-key}}
        - {name: relay-secret, secret: {secretName: rally-relay-secret}}
        - {name: tls, secret: {secretName: rally-tls}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rally-relay
  labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: relay,
           app.kubernetes.io/part-of: rally}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: relay}}
  template:
    metadata: {labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: relay,
                        app.kubernetes.io/part-of: rally}}
    spec:
      <<: *pod
      containers:
        - <<: *rallyd
          args: ["--services", "relay"]
          env:
            - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
            - {name: RALLY_RELAY_LISTEN, value: "$(POD_IP):7371"}
            - {name: RALLY_ALLOW_PLAINTEXT, value: "true"}
          ports:
            - {name: grpc, containerPort: 7370, protocol: TCP}
            - {name: health, containerPort: 7372, protocol: TCP}
            - {name: relay, containerPort: 7371, protocol: UDP}
          readinessProbe: {grpc: {port: 7372}}
          volumeMounts:
            - {name: relay-secret, mountPath: /etc/rally/relay}
      volumes:
        - {name: relay-secret, secret: {secretName: rally-relay-secret}}
---
apiVersion: v1
kind: Service
metadata:
  name: rally-relay
  labels: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: relay,
           app.kubernetes.io/part-of: rally}
spec:
  type: LoadBalancer
  selector: {app.kubernetes.io/name: rallyd, app.kubernetes.io/component: relay}
  ports: [{name: relay, port: 7371, targetPort: relay, protocol: UDP}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: &db
  name: rally-postgres
  labels: {app.kubernetes.io/name: postgres, app.kubernetes.io/component: database,
           app.kubernetes.io/part-of: rally}
spec:
  serviceName: rally-postgres
  selector: {matchLabels: {app.kubernetes.io/name: postgres, app.kubernetes.io/component: database}}
  template:
    metadata: {labels: {app.kubernetes.io/name: postgres, app.kubernetes.io/component: database,
                        app.kubernetes.io/part-of: rally}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 999}
      containers:
        - name: postgres
          image: postgres:17-bookworm
          ports: [{name: postgres, containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready]}}
          livenessProbe: {exec: {command: [pg_isready]}}
          resources: {requests: {cpu: 100m, memory: 256Mi}, limits: {cpu: "1", memory: 0.5Gi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true,
                            capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: *db
spec:
  clusterIP: None
  selector: {app.kubernetes.io/name: postgres, app.kubernetes.io/component: database}
  ports: [{name: postgres, port: 5432, targetPort: postgres}]
"""

# What the dev overlay adds: the Secrets, generated and marked.
DEV_SECRETS = """
apiVersion: v1
kind: Secret
metadata: {name: rally-database, labels: &dev {app.kubernetes.io/name: rallyd,
                                               app.kubernetes.io/part-of: rally,
                                               rally/dev-only: "true"}}
data: {url: cG9zdGdyZXM6Ly8=}
---
apiVersion: v1
kind: Secret
metadata: {name: rally-token-key, labels: *dev}
data: {token-signing-key.pem: LS0t}
---
apiVersion: v1
kind: Secret
metadata: {name: rally-relay-secret, labels: *dev}
data: {relay-grant-secret: MDA=}
---
apiVersion: v1
kind: Secret
metadata: {name: rally-token-verify-key, labels: *dev}
data: {token-verify-key.pem: LS0t}
---
apiVersion: v1
kind: Secret
metadata: {name: rally-tls, labels: *dev}
data: {tls.crt: LS0t, tls.key: LS0t}
"""

# An excerpt of `rallyd --help` in clap's format.
HELP = """Usage: rallyd [OPTIONS]

Options:
      --listen <LISTEN>
          Address of the gRPC server

          [env: RALLY_LISTEN=]
          [default: 127.0.0.1:7370]

      --relay-listen <RELAY_LISTEN>
          [env: RALLY_RELAY_LISTEN=]

      --database-url <DATABASE_URL>
          [env: RALLY_DATABASE_URL=]

      --services <SERVICES>
          Which services to run, comma-separated

          Possible values:
          - identity: Accounts and tokens
          - rooms:    Rooms and matchmaking
          - broker:   The connection broker
          - relay:    The UDP reflector and relay (not gRPC)

          [env: RALLY_SERVICES=]

      --token-key-file <TOKEN_KEY_FILE>
          [env: RALLY_TOKEN_KEY_FILE=]

      --token-verify-keys <TOKEN_VERIFY_KEYS>
          [env: RALLY_TOKEN_VERIFY_KEYS=]

      --tls-cert-file <TLS_CERT_FILE>
          [env: RALLY_TLS_CERT_FILE=]

      --tls-key-file <TLS_KEY_FILE>
          [env: RALLY_TLS_KEY_FILE=]

      --health-listen <HEALTH_LISTEN>
          [env: RALLY_HEALTH_LISTEN=]

      --allow-plaintext
          [env: RALLY_ALLOW_PLAINTEXT=]

      --relay-secret-file <RELAY_SECRET_FILE>
          [env: RALLY_RELAY_SECRET_FILE=]

      --relay-public-addresses <RELAY_PUBLIC_ADDRESSES>
          [env: RALLY_RELAY_PUBLIC_ADDRESSES=]

      --shutdown-grace-secs <SHUTDOWN_GRACE_SECS>
          [env: RALLY_SHUTDOWN_GRACE_SECS=]

  -h, --help
          Print help (see a summary with '-h')
"""


def docs_of(text):
    """The documents, read as one YAML sequence so that anchors reach across them, then
    copied apart (a case breaks one object, not every object sharing an alias)."""
    parts = [p.strip() for p in text.split("\n---\n") if p.strip()]
    sequence = "\n".join("- " + textwrap.indent(p, "  ")[2:] for p in parts)
    return json.loads(json.dumps(yaml.safe_load(sequence)))


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod(docs, name, kind="Deployment"):
    return find(docs, kind, name)["spec"]["template"]["spec"]


def container(docs, name, kind="Deployment"):
    return pod(docs, name, kind)["containers"][0]


def config(docs):
    return find(docs, "ConfigMap", "rally-config")["data"]


def drop(docs, kind, name):
    docs.remove(find(docs, kind, name))


def set_env(docs, deployment, name, **value):
    entries = container(docs, deployment).setdefault("env", [])
    entries[:] = [e for e in entries if e["name"] != name] + [dict(name=name, **value)]


def unset_env(docs, deployment, name):
    entries = container(docs, deployment).setdefault("env", [])
    entries[:] = [e for e in entries if e["name"] != name]


def probes_on_the_tls_port(docs):
    """No health listener: every probe on --listen's port, which is TLS for identity."""
    config(docs).pop("RALLY_HEALTH_LISTEN")
    for name in ("rally-identity", "rally-broker", "rally-relay"):
        box = container(docs, name)
        box["ports"] = [p for p in box["ports"] if p["name"] != "health"]
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in box:
                box[probe]["grpc"]["port"] = 7370


def plaintext_broker(docs):
    for name in ("RALLY_TLS_CERT_FILE", "RALLY_TLS_KEY_FILE"):
        unset_env(docs, "rally-broker", name)
    set_env(docs, "rally-broker", "RALLY_ALLOW_PLAINTEXT", value="true")


def signing_key_in_broker(docs):
    pod(docs, "rally-broker")["volumes"].append(
        {"name": "token-key", "secret": {"secretName": "rally-token-key"}})
    container(docs, "rally-broker")["volumeMounts"].append(
        {"name": "token-key", "mountPath": "/etc/rally/token"})


def relay_secret_in_identity(docs):
    pod(docs, "rally-identity")["volumes"].append(
        {"name": "relay-secret", "secret": {"secretName": "rally-relay-secret"}})
    container(docs, "rally-identity")["volumeMounts"].append(
        {"name": "relay-secret", "mountPath": "/etc/rally/relay"})


def block_evictions(docs):
    spec = find(docs, "PodDisruptionBudget", "rally-identity")["spec"]
    spec.pop("maxUnavailable")
    spec["minAvailable"] = 2


def add_secret_with_data(docs):
    docs.append({"apiVersion": "v1", "kind": "Secret", "data": {"url": "eA=="},
                 "metadata": {"name": "rally-database", "labels": {
                     "app.kubernetes.io/name": "rallyd", "app.kubernetes.io/part-of": "rally"}}})


# (rule that must catch it, what is broken, how, secrets mode)
CASES = [
    ("parse", "a document without kind", lambda d: d.append({"metadata": {"name": "x"}}), "external"),
    ("probes", "rallyd without a liveness probe",
     lambda d: container(d, "rally-identity").pop("livenessProbe"), "external"),
    ("probes", "Postgres without a readiness probe",
     lambda d: container(d, "rally-postgres", "StatefulSet").pop("readinessProbe"), "external"),
    ("resources", "no memory limit",
     lambda d: container(d, "rally-identity")["resources"]["limits"].pop("memory"), "external"),
    ("resources", "a cpu request above its limit",
     lambda d: container(d, "rally-identity")["resources"]["requests"].update(cpu="1500m"),
     "external"),
    ("labels", "an object without part-of",
     lambda d: find(d, "ConfigMap", "rally-config")["metadata"]["labels"].pop(cm.PART_OF),
     "external"),
    ("labels", "a workload whose component differs from its pods'",
     lambda d: find(d, "Deployment", "rally-broker")["metadata"]["labels"].update(
         {cm.COMPONENT: "rooms"}), "external"),
    ("selectors", "a selector that picks other workloads' pods",
     lambda d: find(d, "Deployment", "rally-broker")["spec"]["selector"]["matchLabels"].pop(
         cm.COMPONENT), "external"),
    ("services", "a Service selecting no pods",
     lambda d: find(d, "Service", "rally-identity")["spec"]["selector"].update(
         {cm.COMPONENT: "identiy"}), "external"),
    ("services", "a targetPort the pods do not have",
     lambda d: find(d, "Service", "rally-identity")["spec"]["ports"][0].update(targetPort="http"),
     "external"),
    ("services", "a relay Service on TCP",
     lambda d: find(d, "Service", "rally-relay")["spec"]["ports"][0].update(protocol="TCP"),
     "external"),
    ("statefulsets", "a StatefulSet governed by a missing Service",
     lambda d: find(d, "StatefulSet", "rally-postgres")["spec"].update(serviceName="postgres"),
     "external"),
    ("hpa", "an HPA targeting a missing Deployment",
     lambda d: find(d, "HorizontalPodAutoscaler", "rally-identity")["spec"]["scaleTargetRef"]
     .update(name="rally-identiy"), "external"),
    ("hpa", "replicas above maxReplicas",
     lambda d: find(d, "Deployment", "rally-identity")["spec"].update(replicas=9), "external"),
    ("hpa", "an autoscaled Deployment without a PDB",
     lambda d: drop(d, "PodDisruptionBudget", "rally-identity"), "external"),
    ("pdb", "a PDB selecting nothing",
     lambda d: find(d, "PodDisruptionBudget", "rally-identity")["spec"]["selector"]["matchLabels"]
     .update({cm.NAME: "rally"}), "external"),
    ("pdb", "a PDB that blocks every eviction", block_evictions, "external"),
    ("references", "a missing ConfigMap",
     lambda d: container(d, "rally-identity")["envFrom"][0]["configMapRef"].update(name="nope"),
     "external"),
    ("references", "a dev render missing a Secret",
     lambda d: drop(d, "Secret", "rally-database"), "dev"),
    ("secrets", "a Secret with data in base or prod", add_secret_with_data, "external"),
    ("secrets", "a dev Secret without the dev-only label",
     lambda d: find(d, "Secret", "rally-token-key")["metadata"]["labels"].pop(cm.DEV_ONLY), "dev"),
    ("security", "a writable root filesystem",
     lambda d: container(d, "rally-identity")["securityContext"].update(
         readOnlyRootFilesystem=False), "external"),
    ("security", "a pod that may run as root",
     lambda d: pod(d, "rally-postgres", "StatefulSet")["securityContext"].pop("runAsNonRoot"),
     "external"),
    ("images", "an image on latest",
     lambda d: container(d, "rally-identity").update(image="rallyd:latest"), "external"),
    ("rallyd-services", "rallyd without --services",
     lambda d: container(d, "rally-identity").pop("args"), "external"),
    ("rallyd-services", "an unknown service",
     lambda d: container(d, "rally-identity").update(args=["--services", "matchmaking"]),
     "external"),
    ("rallyd-ports", "a grpc containerPort other than --listen's",
     lambda d: container(d, "rally-identity")["ports"][0].update(containerPort=8080), "external"),
    ("rallyd-ports", "no containerPort for the health listener",
     lambda d: container(d, "rally-identity")["ports"].pop(), "external"),
    ("rallyd-ports", "gRPC on loopback",
     lambda d: config(d).update(RALLY_LISTEN="127.0.0.1:7370"), "external"),
    ("rallyd-ports", "the relay on loopback",
     lambda d: set_env(d, "rally-relay", "RALLY_RELAY_LISTEN", value="127.0.0.1:7371"),
     "external"),
    ("rallyd-ports", "no UDP containerPort for the relay's port",
     lambda d: set_env(d, "rally-relay", "RALLY_RELAY_LISTEN", value="$(POD_IP):7400"),
     "external"),
    ("rallyd-probes", "a probe for a service the process does not run",
     lambda d: container(d, "rally-identity")["readinessProbe"]["grpc"].update(
         service="rally.broker.v1.Broker"), "external"),
    ("rallyd-probes", "a gRPC probe on the TLS port", probes_on_the_tls_port, "external"),
    ("rallyd-probes", "an HTTP probe on a gRPC server",
     lambda d: container(d, "rally-identity").update(
         livenessProbe={"httpGet": {"port": 7370, "path": "/"}}), "external"),
    ("rallyd-shutdown", "a grace period shorter than preStop + drain",
     lambda d: pod(d, "rally-identity").update(terminationGracePeriodSeconds=12), "external"),
    ("rallyd-secrets", "a database URL written in the manifest",
     lambda d: set_env(d, "rally-identity", "RALLY_DATABASE_URL",
                       value="postgres://rally:hunter2@db/rally"), "external"),
    ("rallyd-secrets", "identity without the token key mounted",
     lambda d: container(d, "rally-identity").pop("volumeMounts"), "external"),
    ("rallyd-secrets", "a broker without the relay secret mounted",
     lambda d: container(d, "rally-broker")["volumeMounts"].pop(1), "external"),
    ("rallyd-secrets", "a broker without the public verify key",
     lambda d: unset_env(d, "rally-broker", "RALLY_TOKEN_VERIFY_KEYS"), "external"),
    ("rallyd-tls", "a certificate without its key",
     lambda d: unset_env(d, "rally-identity", "RALLY_TLS_KEY_FILE"), "external"),
    ("rallyd-tls", "a TLS key that is no file of a mounted Secret",
     lambda d: container(d, "rally-identity")["volumeMounts"].pop(), "external"),
    ("rallyd-tls", "plaintext beyond loopback without --allow-plaintext",
     lambda d: unset_env(d, "rally-relay", "RALLY_ALLOW_PLAINTEXT"), "external"),
    ("rallyd-tls", "the broker in plaintext where TLS is required", plaintext_broker, "required"),
    ("rallyd-least-privilege", "the signing key mounted in the broker", signing_key_in_broker,
     "external"),
    ("rallyd-least-privilege", "a broker told to read the signing key",
     lambda d: set_env(d, "rally-broker", "RALLY_TOKEN_KEY_FILE",
                       value="/etc/rally/relay/relay-grant-secret"), "external"),
    ("rallyd-least-privilege", "the relay secret mounted in identity", relay_secret_in_identity,
     "external"),
    ("rallyd-least-privilege", "the database URL given to the relay",
     lambda d: set_env(d, "rally-relay", "RALLY_DATABASE_URL",
                       valueFrom={"secretKeyRef": {"name": "rally-database", "key": "url"}}),
     "external"),
    ("rallyd-relay-address", "a public relay port no Service exposes",
     lambda d: config(d).update(RALLY_RELAY_PUBLIC_ADDRESSES="198.18.0.1:9999"), "external"),
    ("rallyd-relay-address", "no public relay address",
     lambda d: config(d).pop("RALLY_RELAY_PUBLIC_ADDRESSES"), "external"),
    ("rallyd-flags", "a flag rallyd does not have",
     lambda d: container(d, "rally-identity")["args"].append("--no-such-flag"), "external"),
    ("rallyd-flags", "a variable rallyd does not read",
     lambda d: config(d).update(RALLY_NOT_A_SETTING="1"), "external"),
]


def check(docs, mode, tls_mode="as-configured"):
    return cm.Checker(copy.deepcopy(docs), mode, rallyd_rules.Help(HELP), tls_mode).run()


def run():
    good = docs_of(GOOD)
    good_dev = good + docs_of(DEV_SECRETS)
    passed, failed = 0, 0

    help_ = rallyd_rules.Help(HELP)
    if help_.services != set(rallyd_rules.GRPC_NAMES) or "--listen" not in help_.flags \
            or "RALLY_SERVICES" not in help_.variables:
        print("self-test FAIL: the --help parser misread the excerpt")
        failed += 1
    else:
        passed += 1
    for mode, docs, tls_mode in (("external", good, "as-configured"),
                                 ("external", good, "required"), ("dev", good_dev, "required")):
        violations = check(docs, mode, tls_mode)
        if violations:
            failed += 1
            print(f"self-test FAIL: the good manifests ({mode}) are refused:")
            for _, line in violations:
                print(f"    {line}")
        else:
            passed += 1
            print(f"self-test ok: the good manifests pass ({mode} secrets, TLS {tls_mode})")
    for rule, what, breaks, mode in CASES:
        docs = copy.deepcopy(good_dev if mode == "dev" else good)
        breaks(docs)
        secrets, tls_mode = ("external", "required") if mode == "required" else (mode,
                                                                                 "as-configured")
        caught = [line for r, line in check(docs, secrets, tls_mode) if r == rule]
        if caught:
            passed += 1
            print(f"self-test ok: {what}: {caught[0]}")
        else:
            failed += 1
            print(f"self-test FAIL: {what}: not caught by rule {rule}")
    untested = set(cm.RULES) - {rule for rule, *_ in CASES}
    if untested:
        failed += 1
        print(f"self-test FAIL: rules without a case: {sorted(untested)}")
    print(f"self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0
