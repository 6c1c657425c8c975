"""The hub's CA for its pod: restored from a Secret, or created and stored in one.

Run by the edgehub chart's ca-init container before the hub starts. Helm's template functions cannot
make an Ed25519 key, so the chart renders an empty Secret and this fills it once:

1. The Secret (mounted at --secret-dir) holds hub.key and hub-ca.crt: they are written into the
   state directory (a different key already there is kept beside it as hub.key.replaced-TIME). After
   a CA rotation (edgehub ca rotate; STATE/ca-set.json) hub-ca.crt is the hub's own, the bundle of the
   CAs it trusts: only hub.key is restored then.
2. Else the state directory's CA is used, or created there (edgehub.identity.HubIdentity), and, with
   --store-secret NAME, stored in that Secret through the Kubernetes API (the pod's service account may
   get and patch that one Secret).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path

FILES = ("hub.key", "hub-ca.crt")
# Written by a hub whose CA was rolled over (edgehub.hub_cas).
CA_SET = "ca-set.json"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def restore(secret_dir: Path, state: Path) -> bool:
    """Copy the CA from the mounted Secret into ``state``; False when the Secret holds none."""
    held = {name: secret_dir / name for name in FILES}
    if not all(path.is_file() and path.stat().st_size for path in held.values()):
        return False
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (state / CA_SET).exists():
        # The CAs of a rotated hub are on the volume (ca-set.json and cas/); hub-ca.crt is their bundle,
        # written by the hub from ca-set.json, so the Secret's copy of the first CA would only be undone.
        held.pop("hub-ca.crt")
    for name, source in held.items():
        target = state / name
        data = source.read_bytes()
        if target.exists() and target.read_bytes() == data:
            continue
        if target.exists():
            kept = target.with_name(f"{name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            target.rename(kept)
            print(f"ca-init: {target} differed from the Secret's; kept it as {kept}", file=sys.stderr)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    print(f"ca-init: the hub CA comes from the Secret ({secret_dir})")
    return True


def store(state: Path, secret: str, namespace: str, api: str, token_file: Path, ca_file: Path | None) -> None:
    """Patch the CA files of ``state`` into the Secret ``namespace/secret``."""
    body = {"data": {name: base64.b64encode((state / name).read_bytes()).decode() for name in FILES}}
    request = urllib.request.Request(
        f"{api.rstrip('/')}/api/v1/namespaces/{namespace}/secrets/{secret}", method="PATCH",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json",
                 "Authorization": f"Bearer {token_file.read_text().strip()}"})
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        answer.read()
    print(f"ca-init: stored the hub CA in the Secret {namespace}/{secret}: back it up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ca-init", description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="the hub's state directory")
    parser.add_argument("--secret-dir", type=Path, help="where the CA Secret is mounted")
    parser.add_argument("--store-secret", metavar="NAME", help="store a CA made here in this Secret")
    parser.add_argument("--namespace", help="the Secret's namespace (default: the pod's)")
    parser.add_argument("--api", default="https://kubernetes.default.svc", help="the Kubernetes API")
    parser.add_argument("--token-file", type=Path, default=SERVICE_ACCOUNT / "token")
    parser.add_argument("--api-ca-file", type=Path, default=SERVICE_ACCOUNT / "ca.crt",
                        help="the API server's CA (ignored for an http:// --api)")
    args = parser.parse_args(argv)
    if args.secret_dir is not None and restore(args.secret_dir, args.state):
        return 0
    from edgehub.identity import HubIdentity  # the image's edgehub: the same key and CA the hub would make

    existed = (args.state / "hub.key").exists()
    identity = HubIdentity.load_or_create(args.state)
    args.state.chmod(0o700)
    print(f"ca-init: {'using the' if existed else 'created a new'} hub CA in {args.state} "
          f"(SHA-256 {identity.ca_fingerprint})")
    if args.store_secret:
        namespace = args.namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
        ca_file = args.api_ca_file if args.api.startswith("https://") else None
        try:
            store(args.state, args.store_secret, namespace, args.api, args.token_file, ca_file)
        except OSError as exc:  # URLError and HTTPError are OSErrors
            print(f"ca-init: could not store the hub CA in the Secret {namespace}/{args.store_secret}: {exc}",
                  file=sys.stderr)
            return 1
    else:
        print(f"ca-init: the hub CA is kept only in {args.state}: back up hub.key and hub-ca.crt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
