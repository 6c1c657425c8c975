"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, from the binaries :mod:`edgesim.k8s_build` builds.

    python -m edgesim.control_plane start --dir DIR   # builds if needed, starts, prints DIR/kubeconfig
    python -m edgesim.control_plane stop --dir DIR

What ``start`` makes in DIR: a CA and the API server's serving certificate (127.0.0.1, ``localhost``
and the in-cluster names), a service-account signing key, a static token file with an administrator
(``system:masters``) and one identity per component (kube-controller-manager and kube-scheduler as the
users Kubernetes' bootstrap RBAC already binds), authorization by RBAC, a kubeconfig per identity
(``DIR/kubeconfig`` is the administrator's), and one kwok-managed node (``kwok-node-0``) on which pods
run as kwok says: Deployments, StatefulSets and DaemonSets become ready, Jobs complete, and the API
server's audit log of what clients (not the control plane's own components) created, patched and deleted
(``DIR/audit.log``). Every port is a free loopback port. ``stop`` ends what ``start`` started (their
pids are in ``DIR/pids.json``).

The tests use :class:`ControlPlane` directly (``tests/conftest.py``: one per session); a test can stop
and start the API server alone (:meth:`ControlPlane.restart_apiserver`). Synchronous and blocking: it
drives other processes and is never imported by the product.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .k8s_build import Toolset, ensure_built
from .net import free_port

SERVICE_CIDR = "10.96.0.0/16"
# The API server's ClusterIP in SERVICE_CIDR, which in-cluster clients dial as kubernetes.default.
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
NODE_NAME = "kwok-node-0"
# kwok manages the nodes carrying this annotation, and only those.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 15.0
START_ATTEMPTS = 3
# kube-apiserver stops listening and drains its requests at once on SIGTERM, then its process lingers
# (15 s here) before it exits: killed after this, a restart loses nothing and takes 5 s, not 20.
APISERVER_STOP_SECONDS = 3.0
# The order they start in; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


# What the API server's audit log keeps (ControlPlane.audit_log): the writes of clients other than the control
# plane's own components, at the Metadata level (who, what, which object; no bodies).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-controller-manager", "system:kube-scheduler", "kwok-controller",
                                    "system:apiserver"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system", "system:nodes"]},
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "Metadata"},
    ],
}


class ControlPlaneError(RuntimeError):
    pass


def _terminate_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (Linux prctl PR_SET_PDEATHSIG).

    Not SIGTERM: an API server whose etcd went at the same moment waits on it to shut down gracefully.
    """
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_hex(24))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, Any] | None,
                 *, ca: bool = False, names: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names or ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False)
    return builder.sign(signing_key, hashes.SHA256())


class ControlPlane:
    """The five processes, their files in ``work_dir``, and a kubeconfig to reach the API server."""

    def __init__(self, work_dir: Path, toolset: Toolset | None = None, *, die_with_parent: bool = True) -> None:
        self.work_dir = Path(work_dir)
        # A test session that is killed must not leave an API server behind; the CLI's start outlives itself.
        self.die_with_parent = die_with_parent
        self.toolset = toolset or Toolset.default()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.identities = {
            "admin": Identity("edgecollab-admin", ("system:masters",)),
            "kube-controller-manager": Identity("system:kube-controller-manager"),
            "kube-scheduler": Identity("system:kube-scheduler"),
            # kwok plays every node's kubelet: node and pod status, leases, evictions.
            "kwok": Identity("kwok-controller", ("system:masters",)),
        }

    # ----- files -----

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "pki" / "ca.crt"

    @property
    def audit_log(self) -> Path:
        """What the API server was asked to change, one JSON event per line, in the order it answered
        (``AUDIT_POLICY``: writes by anyone but the control plane's own components): a test reads from it
        the order in which a client created, patched and deleted objects."""
        return self.work_dir / "audit.log"

    def _write_pki(self) -> None:
        pki = self.work_dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _certificate("edgecollab test cluster CA", ca_key, None, ca=True)
        server_key = _key()
        server = _certificate("kube-apiserver", server_key, (ca, ca_key),
                              names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                     "kubernetes.default.svc.cluster.local"), ips=("127.0.0.1", SERVICE_IP))
        files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key),
                 "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
                 "apiserver.key": _pem_key(server_key)}
        service_accounts = _key()
        files["sa.key"] = _pem_key(service_accounts)
        files["sa.pub"] = service_accounts.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for name, data in files.items():
            (pki / name).write_bytes(data)
            (pki / name).chmod(0o600)
        lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in self.identities.values()]
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (pki / "tokens.csv").chmod(0o600)

    def kubeconfig_for(self, identity: str) -> Path:
        path = self.work_dir / ("kubeconfig" if identity == "admin" else f"{identity}.kubeconfig")
        ident = self.identities[identity]
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "edgecollab",
                  "clusters": [{"name": "edgecollab", "cluster": {
                      "server": self.server, "certificate-authority": str(self.ca_file)}}],
                  "users": [{"name": ident.user, "user": {"token": ident.token}}],
                  "contexts": [{"name": "edgecollab", "context": {"cluster": "edgecollab", "user": ident.user}}]}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        path.chmod(0o600)
        return path

    # ----- processes -----

    def _argv(self, name: str) -> list[str]:
        pki, binary = self.work_dir / "pki", str(self.toolset.binary(name))
        if name == "etcd":
            client, peer = self.ports["etcd"], self.ports["etcd-peer"]
            return [binary, "--name", "default", "--data-dir", str(self.work_dir / "etcd"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                    "--listen-metrics-urls", f"http://127.0.0.1:{self.ports['etcd-metrics']}",
                    # Test data is thrown away: no fsync, and a small log before snapshots.
                    "--unsafe-no-fsync", "--snapshot-count", "5000", "--log-level", "warn"]
        if name == "kube-apiserver":
            return [binary, "--etcd-servers", f"http://127.0.0.1:{self.ports['etcd']}",
                    "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                    "--secure-port", str(self.ports["apiserver"]),
                    "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
                    "--client-ca-file", str(pki / "ca.crt"), "--token-auth-file", str(pki / "tokens.csv"),
                    "--authorization-mode", "RBAC", "--allow-privileged",
                    "--service-cluster-ip-range", SERVICE_CIDR,
                    "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file", str(pki / "sa.pub"),
                    "--service-account-signing-key-file", str(pki / "sa.key"),
                    "--audit-policy-file", str(self._write_audit_policy()), "--audit-log-path", str(self.audit_log),
                    "--audit-log-format", "json", "--audit-log-mode", "blocking",
                    "--enable-priority-and-fairness=false", "--v=1"]
        if name == "kube-controller-manager":
            return [binary, "--kubeconfig", str(self.kubeconfig_for(name)),
                    "--authentication-kubeconfig", str(self.kubeconfig_for(name)),
                    "--authorization-kubeconfig", str(self.kubeconfig_for(name)),
                    "--bind-address", "127.0.0.1", "--secure-port", str(self.ports["controller-manager"]),
                    "--leader-elect=false", "--use-service-account-credentials",
                    "--root-ca-file", str(pki / "ca.crt"),
                    "--service-account-private-key-file", str(pki / "sa.key"),
                    "--cluster-cidr", POD_CIDR, "--service-cluster-ip-range", SERVICE_CIDR,
                    "--controllers", "*,-nodeipam", "--v=1"]
        if name == "kube-scheduler":
            return [binary, "--kubeconfig", str(self.kubeconfig_for(name)),
                    "--authentication-kubeconfig", str(self.kubeconfig_for(name)),
                    "--authorization-kubeconfig", str(self.kubeconfig_for(name)),
                    "--bind-address", "127.0.0.1", "--secure-port", str(self.ports["scheduler"]),
                    "--leader-elect=false", "--v=1"]
        if name == "kwok":
            key, value = KWOK_ANNOTATION
            return [binary, "--kubeconfig", str(self.kubeconfig_for(name)), "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={key}={value}", "--cidr", POD_CIDR,
                    "--node-ip", "127.0.0.1", "--node-lease-duration-seconds", "40"]
        raise ValueError(name)

    def _write_audit_policy(self) -> Path:
        path = self.work_dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(AUDIT_POLICY), encoding="utf-8")
        return path

    def _spawn(self, name: str) -> None:
        log = open(self.work_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed on stop
        self.processes[name] = subprocess.Popen(self._argv(name), stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True,
                                                preexec_fn=_terminate_with_parent if self.die_with_parent else None)
        log.close()
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {name: proc.pid for name, proc in self.processes.items() if proc.poll() is None}
        (self.work_dir / "pids.json").write_text(json.dumps(pids), encoding="utf-8")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.work_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def _check_alive(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None and proc.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {proc.returncode}; its log ends:\n{self.log_tail(name)}")

    def _request(self, path: str, *, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, str]:
        """The administrator's GET of ``path`` (a POST of ``body`` when given): the status and the text."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        headers = {"Authorization": f"Bearer {self.identities['admin'].token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def _wait(self, what: str, check: Any, watched: tuple[str, ...], timeout: float = READY_TIMEOUT_SECONDS) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name in watched:
                self._check_alive(name)
            try:
                last = check()
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            else:
                if last is True:
                    return
            time.sleep(0.25)
        raise ControlPlaneError(f"{what} not within {timeout:.0f} s (last: {last}); logs:\n"
                                + "\n".join(f"--- {n}\n{self.log_tail(n)}" for n in watched))

    def _api_ready(self) -> bool | str:
        status, body = self._request("/readyz")
        return True if status == 200 else f"/readyz {status}: {body[-300:]}"

    def start_apiserver(self) -> None:
        self._spawn("kube-apiserver")
        self._wait("kube-apiserver /readyz", self._api_ready, ("etcd", "kube-apiserver"))

    def stop_apiserver(self) -> None:
        self._stop("kube-apiserver")

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def _register_node(self) -> None:
        """The kwok node: a Node object kwok takes over (heartbeats, capacity, pods' status)."""
        key, value = KWOK_ANNOTATION
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                             "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "type": "kwok"}},
                "spec": {"podCIDR": "10.244.0.0/24"},
                "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250"},
                           "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250"}}}
        status, answer = self._request("/api/v1/nodes", body=node, timeout=10)
        if status not in (201, 409):
            raise ControlPlaneError(f"registering node {NODE_NAME}: {status} {answer}")

    def _node_ready(self) -> bool | str:
        status, body = self._request(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return f"{status}: {body[-200:]}"
        conditions = json.loads(body).get("status", {}).get("conditions") or []
        return True if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else str(conditions)

    def _default_service_account(self) -> bool | str:
        status, _ = self._request("/api/v1/namespaces/default/serviceaccounts/default")
        return True if status == 200 else f"{status}"

    def start(self) -> ControlPlane:
        """Build if needed, start all five, and return once a pod can be created and scheduled."""
        ensure_built(self.toolset)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # A port picked free can be taken before its server binds it: start again on other ports.
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
                break
            except ControlPlaneError as exc:
                if attempt == START_ATTEMPTS or "address already in use" not in str(exc):
                    raise
                print(f"[control plane] a port was taken meanwhile (attempt {attempt}/{START_ATTEMPTS}); "
                      "starting again on other ports", flush=True)
        print(f"[control plane] ready in {time.monotonic() - started:.1f} s: {self.server} "
              f"(KUBECONFIG={self.kubeconfig})", flush=True)
        return self

    def _start_once(self) -> None:
        for port in ("etcd", "etcd-peer", "etcd-metrics", "apiserver", "controller-manager", "scheduler"):
            self.ports[port] = free_port()
        shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)
        self._write_pki()
        self.kubeconfig_for("admin")
        try:
            self._spawn("etcd")
            self.start_apiserver()
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._spawn(name)
            self._register_node()
            self._wait(f"node {NODE_NAME} Ready (kwok)", self._node_ready, COMPONENTS)
            # Pods can only be created once the service-account controller made a namespace's account.
            self._wait("the default service account", self._default_service_account, COMPONENTS)
        except BaseException:
            self.stop()
            raise

    def _stop(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(APISERVER_STOP_SECONDS if name == "kube-apiserver" else STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_SECONDS)
        self._write_pids()

    def stop(self) -> None:
        for name in reversed(COMPONENTS):
            self._stop(name)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_recorded(work_dir: Path) -> list[str]:
    """Stop the processes a ``start`` in another process recorded in ``work_dir/pids.json``."""
    pids_file = Path(work_dir) / "pids.json"
    if not pids_file.is_file():
        return []
    stopped = []
    for name, pid in reversed(list(json.loads(pids_file.read_text(encoding="utf-8")).items())):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    pids_file.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgesim.control_plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, required=True, help="the control plane's files (certificates, "
                                                                "etcd data, logs, kubeconfig)")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stopped = stop_recorded(args.dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if (args.dir / "pids.json").is_file():
        print(f"error: {args.dir} has a running control plane (pids.json); stop it first", file=sys.stderr)
        return 1
    plane = ControlPlane(args.dir, die_with_parent=False)
    try:
        plane.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The processes run on in their own sessions; `stop --dir` ends them.
    plane.processes.clear()
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
