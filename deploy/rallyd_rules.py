"""What rallyd does with its configuration, and the rules that follow (check_manifests.py).

The resolution of a container's environment (envFrom, env with $(VAR), args over variables)
and the rallyd-* rules, as a mixin of check_manifests.Checker. What is known of rallyd beyond
its --help comes from services/rallyd/src/config.rs and server.rs: the gRPC names each service
reports to health, the defaults below, which services read which key file. Update it with them.
"""

import ipaddress
import os
import re
import subprocess
import sys

# From services/rallyd/src/config.rs (ServiceKind::grpc_names) and its defaults.
GRPC_NAMES = {
    "identity": ["rally.identity.v1.Identity"],
    "rooms": ["rally.rooms.v1.Rooms", "rally.rooms.v1.Matchmaking"],
    "broker": ["rally.broker.v1.Broker"],
    "relay": [],
}
DEFAULTS = {
    "RALLY_LISTEN": "127.0.0.1:7370",
    "RALLY_ALLOW_PLAINTEXT": "false",
    "RALLY_RELAY_LISTEN": "127.0.0.1:7371",
    "RALLY_SHUTDOWN_GRACE_SECS": "10",
}
# Read by rallyd but not a flag: the log filter (services/rallyd/src/telemetry.rs).
NON_FLAG_VARIABLES = {"RALLY_LOG"}
# Services that keep state (open the database) and that verify access tokens (server.rs).
STORE_SERVICES = {"identity", "rooms", "broker"}
VERIFYING_SERVICES = {"rooms", "broker"}
# Services whose gRPC carries secrets (passwords, tokens, the fingerprints peers pin): TLS where
# the checker is told it is required (prod). A relay-only process serves health and reflection.
PUBLIC_GRPC_SERVICES = {"identity", "rooms", "broker"}
# What $(POD_IP) stands for while checking addresses.
POD_IP_STANDIN = "10.0.0.1"
DOCUMENTATION_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


class Help:
    """What `rallyd --help` says: flags, RALLY_* variables and the --services values."""

    def __init__(self, text):
        self.flags = set(re.findall(r"(?m)^\s*(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", text))
        self.variables = set(re.findall(r"\[env: ([A-Z0-9_]+)=", text))
        block = re.search(r"(?ms)^\s*--services\b(.*?)(?=^\s*-(?:\w,|-)\S)", text)
        services = set()
        if block:
            listed = re.search(r"\[possible values: ([^\]]*)\]", block.group(1))
            if listed:
                services = {v.strip() for v in listed.group(1).split(",")}
            else:
                services = set(re.findall(r"(?m)^\s*- ([a-z0-9-]+)\s*:", block.group(1)))
        self.services = services

    @staticmethod
    def from_binary(path):
        clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no RALLY_* in the output
        try:
            run = subprocess.run(
                [path, "--help"], capture_output=True, text=True, env=clean, timeout=60
            )
        except OSError as error:
            sys.exit(f"check_manifests: cannot run RALLYD_BIN={path}: {error}")
        if run.returncode != 0 or "--listen" not in run.stdout:
            sys.exit(f"check_manifests: `{path} --help` failed:\n{run.stdout}{run.stderr}")
        return Help(run.stdout)


def split_address(text):
    """("host", port) of "host:port" or "[v6]:port"; None when it is not one."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        return None
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Value:
    """One variable of a container's environment: its text when known, and where it came from."""

    def __init__(self, text, source):
        self.text = text
        self.source = source  # literal, configmap, secret, field, args, unknown


class Rallyd:
    """The configuration a rallyd container starts with: env, envFrom and args resolved."""

    def __init__(self, container, config_maps):
        self.container = container
        self.values = {}
        self.variables = []  # (name, where) of every RALLY_* variable given
        self.flags = []
        self.secret_env_from = False
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                name = source["configMapRef"].get("name")
                for key, text in ((config_maps.get(name) or {}).get("data") or {}).items():
                    self._set(prefix + key, Value(str(text), "configmap"), f"ConfigMap {name}")
            elif "secretRef" in source:
                self.secret_env_from = True
        for entry in container.get("env") or []:
            name = entry.get("name", "")
            if "value" in entry:
                value = Value(self.expand(str(entry["value"])), "literal")
            else:
                ref = entry.get("valueFrom") or {}
                if "secretKeyRef" in ref:
                    value = Value(None, "secret")
                elif "fieldRef" in ref:
                    path = ref["fieldRef"].get("fieldPath")
                    value = Value(POD_IP_STANDIN if path == "status.podIP" else None, "field")
                elif "configMapKeyRef" in ref:
                    cm = config_maps.get(ref["configMapKeyRef"].get("name")) or {}
                    text = (cm.get("data") or {}).get(ref["configMapKeyRef"].get("key"))
                    value = Value(None if text is None else str(text), "configmap")
                else:
                    value = Value(None, "unknown")
            self._set(name, value, "env")
        args = [self.expand(str(a)) for a in container.get("args") or []]
        i = 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("--"):
                flag, _, inline = arg.partition("=")
                self.flags.append(flag)
                if inline or "=" in arg:
                    text = inline
                elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
                    text = args[i]
                else:
                    text = "true"
                self.values["RALLY_" + flag[2:].upper().replace("-", "_")] = Value(text, "args")
            i += 1

    def _set(self, name, value, where):
        self.values[name] = value
        if name.startswith("RALLY_"):
            self.variables.append((name, where))

    def expand(self, text):
        def sub(match):
            value = self.values.get(match.group(1))
            return value.text if value is not None and value.text is not None else match.group(0)

        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)

    def get(self, name):
        return self.values.get(name)

    def text(self, name):
        value = self.values.get(name)
        if value is None:
            return DEFAULTS.get(name)
        return value.text

    def services(self):
        value = self.values.get("RALLY_SERVICES")
        if value is None or value.text is None:
            return None
        return [s.strip() for s in value.text.split(",") if s.strip()]


def is_rallyd(container):
    image = str(container.get("image", ""))
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return repository == "rallyd"


class RallydRules:
    """The rallyd-* rules; mixed into Checker, whose helpers they use."""

    def check_rallyd(self):
        maps = self.config_maps()
        relays = []  # (workload, listen ports)
        # Secret name -> the services of every container mounting it, for least privilege.
        holders = {}
        brokers = []  # (where, public address text)
        if self.help is None:
            self.notes.append("RALLYD_BIN is unset: flags and RALLY_* variables were not "
                              "checked against `rallyd --help` (rule rallyd-flags skipped)")
        for workload in self.workloads():
            spec = self.pod_spec(workload)
            for container in self.containers(workload):
                if not is_rallyd(container):
                    continue
                where = f"{self.ident(workload)} container {container.get('name')}"
                rallyd = Rallyd(container, maps)
                services = self.check_rallyd_services(where, rallyd)
                listen_port = self.check_rallyd_ports(where, container, rallyd, services, relays,
                                                      workload)
                health_port = self.check_rallyd_health_port(where, container, rallyd)
                tls = self.check_rallyd_tls(where, container, spec, rallyd, services)
                self.check_rallyd_probes(where, container, services, listen_port, health_port,
                                         tls)
                self.check_rallyd_least_privilege(where, container, spec, rallyd, services,
                                                  holders)
                self.check_rallyd_shutdown(where, spec, container, rallyd)
                self.check_rallyd_secrets(where, container, spec, rallyd, services)
                self.check_rallyd_flags(where, rallyd)
                if "broker" in services and "relay" not in services:
                    brokers.append((where, rallyd.text("RALLY_RELAY_PUBLIC_ADDRESSES")))
        for where, public in brokers:
            self.check_relay_address(where, public, relays)
        self.check_secret_holders(holders)

    def check_rallyd_services(self, where, rallyd):
        services = rallyd.services()
        if services is None:
            self.fail("rallyd-services", where, "--services / RALLY_SERVICES is not given "
                      "(rallyd would run every service, its relay on loopback)")
            return []
        known = self.help.services if self.help and self.help.services else set(GRPC_NAMES)
        for service in services:
            if service not in known:
                self.fail("rallyd-services", where, f"unknown service {service!r} "
                          f"(known: {', '.join(sorted(known))})")
        return [s for s in services if s in GRPC_NAMES]

    def check_rallyd_ports(self, where, container, rallyd, services, relays, workload):
        ports = container.get("ports") or []
        listen = split_address(rallyd.text("RALLY_LISTEN") or "")
        if listen is None:
            self.fail("rallyd-ports", where, f"--listen {rallyd.text('RALLY_LISTEN')!r} is "
                      "not an address")
            return None
        host, port = listen
        if is_loopback(host):
            self.fail("rallyd-ports", where, f"--listen {host}:{port} is loopback: neither "
                      "probes nor Services reach it")
        grpc = [p for p in ports if p.get("name") == "grpc"]
        if len(grpc) != 1 or grpc[0].get("containerPort") != port \
                or grpc[0].get("protocol", "TCP") != "TCP":
            self.fail("rallyd-ports", where, f"needs one TCP containerPort named grpc equal to "
                      f"--listen's port {port} (has {grpc})")
        if "relay" in services:
            text = rallyd.text("RALLY_RELAY_LISTEN") or ""
            listen_ports = []
            for item in text.split(","):
                address = split_address(item)
                if address is None:
                    self.fail("rallyd-ports", where, f"--relay-listen item {item!r} is not an "
                              "address (an unresolved $(VAR)?)")
                    continue
                if is_loopback(address[0]):
                    self.fail("rallyd-ports", where, f"--relay-listen {item} is loopback: "
                              "clients cannot reach it (use the pod IP, $(POD_IP))")
                if not any(p.get("containerPort") == address[1]
                           and p.get("protocol", "TCP") == "UDP" for p in ports):
                    self.fail("rallyd-ports", where, f"--relay-listen port {address[1]} has no "
                              "UDP containerPort")
                listen_ports.append(address[1])
            relays.append((workload, listen_ports))
        return port

    def check_rallyd_health_port(self, where, container, rallyd):
        """The --health-listen port (a TCP containerPort named health), or None without it."""
        text = rallyd.text("RALLY_HEALTH_LISTEN")
        if not text:
            return None
        address = split_address(text)
        if address is None:
            self.fail("rallyd-ports", where, f"--health-listen {text!r} is not an address")
            return None
        if is_loopback(address[0]):
            self.fail("rallyd-ports", where, f"--health-listen {text} is loopback: probes "
                      "cannot reach it")
        ports = [p for p in container.get("ports") or [] if p.get("name") == "health"]
        if len(ports) != 1 or ports[0].get("containerPort") != address[1] \
                or ports[0].get("protocol", "TCP") != "TCP":
            self.fail("rallyd-ports", where, f"needs one TCP containerPort named health equal "
                      f"to --health-listen's port {address[1]} (has {ports})")
        return address[1]

    def check_rallyd_tls(self, where, container, spec, rallyd, services):
        """Whether the container serves gRPC over TLS; fails what rallyd would refuse to start
        with, and plaintext where the checker is told TLS is required."""
        cert, key = rallyd.text("RALLY_TLS_CERT_FILE"), rallyd.text("RALLY_TLS_KEY_FILE")
        if bool(cert) != bool(key):
            self.fail("rallyd-tls", where, "--tls-cert-file and --tls-key-file go together")
            return False
        if cert and key:
            for name, path in (("RALLY_TLS_CERT_FILE", cert), ("RALLY_TLS_KEY_FILE", key)):
                if self.secret_mount(container, spec, path) is None:
                    self.fail("rallyd-tls", where, f"{name}={path} is no file of a mounted "
                              "Secret (cert-manager writes its certificates into one)")
            return True
        public = sorted(PUBLIC_GRPC_SERVICES & set(services))
        if self.tls_mode == "required" and public:
            self.fail("rallyd-tls", where, f"serves {', '.join(public)} without TLS: set "
                      "RALLY_TLS_CERT_FILE and RALLY_TLS_KEY_FILE from a mounted Secret")
        listen = split_address(rallyd.text("RALLY_LISTEN") or "")
        allowed = (rallyd.text("RALLY_ALLOW_PLAINTEXT") or "").lower() in ("true", "1", "yes")
        if listen and not is_loopback(listen[0]) and not allowed:
            if self.tls_mode == "from-overlay":
                self.tls_left_to_overlays = True
            else:
                self.fail("rallyd-tls", where, f"plaintext gRPC on {listen[0]}:{listen[1]} "
                          "without --allow-plaintext: rallyd refuses to start (give it TLS)")
        return False

    def check_rallyd_probes(self, where, container, services, listen_port, health_port, tls):
        probe_port = health_port or listen_port
        allowed = {""} | {name for s in services for name in GRPC_NAMES[s]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            grpc = probe.get("grpc")
            if not grpc:
                self.fail("rallyd-probes", where, f"{kind} is not a gRPC health probe")
                continue
            if grpc.get("port") != probe_port:
                self.fail("rallyd-probes", where, f"{kind} probes port {grpc.get('port')}, but "
                          f"health is served on {probe_port}")
            elif tls and probe_port == listen_port:
                self.fail("rallyd-probes", where, f"{kind} probes the TLS port {probe_port}: "
                          "gRPC probes cannot speak TLS (probe --health-listen's port)")
            if grpc.get("service", "") not in allowed:
                self.fail("rallyd-probes", where, f"{kind} asks about {grpc.get('service')!r}, "
                          f"which this process does not serve (it reports {sorted(allowed)})")

    def check_rallyd_shutdown(self, where, spec, container, rallyd):
        try:
            grace = int(rallyd.text("RALLY_SHUTDOWN_GRACE_SECS"))
        except (TypeError, ValueError):
            self.fail("rallyd-shutdown", where, "--shutdown-grace-secs is not a number")
            return
        pre_stop = (((container.get("lifecycle") or {}).get("preStop") or {})
                    .get("sleep") or {}).get("seconds", 0)
        period = spec.get("terminationGracePeriodSeconds", 30)
        if period <= grace + pre_stop:
            self.fail("rallyd-shutdown", where, f"terminationGracePeriodSeconds {period} is not "
                      f"more than preStop {pre_stop} s + --shutdown-grace-secs {grace} s")

    def secret_mount(self, container, spec, path):
        """(Secret name, file name in it) of the Secret volume `path` is a file of, or None."""
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            root = str(mount.get("mountPath", "")).rstrip("/")
            inside = path == root if mount.get("subPath") else path.startswith(root + "/")
            if not root or not inside:
                continue
            volume = volumes.get(mount.get("name")) or {}
            if "secret" in volume:
                items = volume["secret"].get("items")
                if items and not mount.get("subPath") and \
                        path[len(root) + 1:] not in [i.get("path") for i in items]:
                    return None
                key = mount["subPath"] if mount.get("subPath") else path[len(root) + 1:]
                for item in items or []:
                    if item.get("path") == key:
                        key = item.get("key")
                return volume["secret"].get("secretName"), key
            projected = (volume.get("projected") or {}).get("sources") or []
            if any("secret" in s for s in projected):
                return "", None  # projected: not followed further
        return None

    def check_rallyd_secrets(self, where, container, spec, rallyd, services):
        url = rallyd.get("RALLY_DATABASE_URL")
        stateful = bool(STORE_SERVICES & set(services))
        if stateful and url is None and not rallyd.secret_env_from:
            self.fail("rallyd-secrets", where, "no RALLY_DATABASE_URL: rallyd would use SQLite "
                      "inside the pod (one replica, lost with the pod)")
        elif url is not None and url.source != "secret":
            self.fail("rallyd-secrets", where, f"the database URL comes from {url.source}, not "
                      "from a Secret (it carries the password)")
        if VERIFYING_SERVICES & set(services) and "identity" not in services \
                and not rallyd.text("RALLY_TOKEN_VERIFY_KEYS"):
            self.fail("rallyd-secrets", where, "no RALLY_TOKEN_VERIFY_KEYS: without identity, "
                      "rallyd verifies tokens with the signing key's public half given there")
        files = [("RALLY_TOKEN_KEY_FILE", "identity" in services)]
        files.append(("RALLY_RELAY_SECRET_FILE", "broker" in services or "relay" in services))
        for name, read in files:
            text = rallyd.text(name)
            if not read:
                continue  # set for other processes perhaps, never read by this one
            if not text:
                self.fail("rallyd-secrets", where, f"{name} is not set: rallyd would "
                          "generate a key of its own under --data-dir")
                continue
            self.check_secret_file(where, container, spec, name, text)
        for name, read in (("RALLY_TOKEN_VERIFY_KEYS", True),
                           ("RALLY_RELAY_VERIFY_SECRET_FILES", "relay" in services)):
            for path in [p for p in (rallyd.text(name) or "").split(",") if p and read]:
                self.check_secret_file(where, container, spec, name, path)

    def check_rallyd_least_privilege(self, where, container, spec, rallyd, services, holders):
        """Records which services each Secret is mounted for; fails a container given a secret
        its services never read (a private key, the database URL)."""
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            secret = (volumes.get(mount.get("name")) or {}).get("secret") or {}
            if secret.get("secretName"):
                holders.setdefault(secret["secretName"], []).append((where, set(services)))
        if "identity" not in services and rallyd.get("RALLY_TOKEN_KEY_FILE") is not None:
            self.fail("rallyd-least-privilege", where, "RALLY_TOKEN_KEY_FILE is given to a "
                      "process without identity: only identity holds the private signing key "
                      "(others take its public half, RALLY_TOKEN_VERIFY_KEYS)")
        if not STORE_SERVICES & set(services) and rallyd.get("RALLY_DATABASE_URL") is not None:
            self.fail("rallyd-least-privilege", where, "the database URL is given to a process "
                      "that keeps no state (it opens no database)")
        if "identity" in services:
            text = rallyd.text("RALLY_TOKEN_KEY_FILE")
            mount = self.secret_mount(container, spec, text) if text else None
            if mount and mount[0]:
                self.signing_secrets.add(mount[0])
        if {"broker", "relay"} & set(services):
            text = rallyd.text("RALLY_RELAY_SECRET_FILE")
            mount = self.secret_mount(container, spec, text) if text else None
            if mount and mount[0]:
                self.relay_secrets.add(mount[0])

    def check_secret_holders(self, holders):
        """The signing key's Secret is mounted only for identity; the relay secret's only for
        the broker and the relay."""
        for name, holding in holders.items():
            for where, services in holding:
                if name in self.signing_secrets and "identity" not in services:
                    self.fail("rallyd-least-privilege", where, f"mounts Secret {name}, the "
                              "private token-signing key, without running identity")
                if name in self.relay_secrets and not {"broker", "relay"} & services:
                    self.fail("rallyd-least-privilege", where, f"mounts Secret {name}, the "
                              "relay grant secret, without running the broker or the relay")

    def check_secret_file(self, where, container, spec, variable, path):
        mount = self.secret_mount(container, spec, path)
        if mount is None:
            self.fail("rallyd-secrets", where, f"{variable}={path} is no file of a mounted Secret")
            return
        name, key = mount
        if self.secrets_mode == "external" and name and key:
            self.external_secrets.setdefault(name, set()).add(key)
        secret = self.find("Secret", name) if name else None
        if self.secrets_mode == "dev" and secret is not None and key is not None and \
                key not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
            self.fail("rallyd-secrets", where, f"{variable}={path}: Secret {name} has no key "
                      f"{key}")

    def check_rallyd_flags(self, where, rallyd):
        if self.help is None:
            return
        for flag in rallyd.flags:
            if flag not in self.help.flags:
                self.fail("rallyd-flags", where, f"{flag} is not a flag of rallyd")
        for name, source in rallyd.variables:
            if name not in self.help.variables and name not in NON_FLAG_VARIABLES:
                self.fail("rallyd-flags", where, f"{name} (from {source}) is not a variable of "
                          "rallyd")

    def check_relay_address(self, where, public, relays):
        first = (public or "").split(",")[0]
        address = split_address(first) if first else None
        if address is None:
            self.fail("rallyd-relay-address", where, "RALLY_RELAY_PUBLIC_ADDRESSES is not set: "
                      "a broker that runs no relay offers none")
            return
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            self.fail("rallyd-relay-address", where, f"{first}: an IP literal is needed, not a "
                      "host name")
            return
        if any(ip in net for net in DOCUMENTATION_NETS):
            self.notes.append(f"{where}: relay public address {first} is a documentation "
                              "placeholder: set the real one before deploying")
        for service in self.of_kind("Service"):
            spec = service.get("spec") or {}
            for workload, listen_ports in relays:
                if not self.matches(spec.get("selector"), self.pod_labels(workload)):
                    continue
                pod_ports = self.pod_ports(workload)
                for port in spec.get("ports") or []:
                    if port.get("protocol", "TCP") != "UDP":
                        continue
                    target = port.get("targetPort", port.get("port"))
                    numbers = [n for name, n, proto in pod_ports
                               if proto == "UDP" and target in (name, n)]
                    if address[1] in (port.get("port"), port.get("nodePort")) and \
                            any(n in listen_ports for n in numbers):
                        return
        self.fail("rallyd-relay-address", where, f"relay public port {address[1]} is no port or "
                  "nodePort of a UDP Service forwarding to a relay's --relay-listen port")
