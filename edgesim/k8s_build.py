"""Kubernetes' own binaries, built from their Go modules once per machine: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok.

    python -m edgesim.k8s_build            # builds what is missing, prints progress, checks --version
    python -m edgesim.k8s_build --where    # prints the directory of the binaries

No release download or container registry is reachable from the project's machines, but the Go module
proxy is, and these programs are Go modules:

- ``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod replaces its staging modules
  (``k8s.io/api``, ``k8s.io/apiserver``, …) with ``./staging/...`` directories. A small module of our own
  requires it at the release and replaces each staging module, as listed in that release's own go.mod,
  with the published ``v0.<minor>.<patch>``; the version is stamped with ``-ldflags -X`` as Kubernetes'
  own build does (an unstamped apiserver calls itself v0.0.0 and its compatibility checks fail).
- ``go.etcd.io/etcd/server/v3`` is a main package whose replace directives only hold in its own
  repository; a module that requires it builds it from the published modules.
- ``sigs.k8s.io/kwok`` makes simulated nodes run pods (ready, completed, deleted) without a kubelet.

The binaries go to ``CACHE/k8s-<versions>/bin`` (``EDGECOLLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgecollab``,
else ``~/.cache/edgecollab``), outside any checkout, so a machine builds once and every later test run
and checkout reuses them; a file lock makes concurrent builds wait for one another.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
# Kubernetes' staging modules not published on the module proxy, so not replaceable (and not needed).
UNPUBLISHED_STAGING = frozenset({"k8s.io/sample-cli-plugin"})
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = ("etcd", *KUBE_COMMANDS, "kwok")
# A Go build of kube-apiserver can take half an hour on two cores; a stuck one is stopped after this.
BUILD_TIMEOUT_SECONDS = 3 * 3600
STAMP = "versions.json"


class BuildError(RuntimeError):
    """A binary could not be built, or does not say the version it was built at."""


def cache_root() -> Path:
    configured = os.environ.get("EDGECOLLAB_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecollab"


@dataclass(frozen=True, slots=True)
class Toolset:
    """Where the binaries of one set of versions live."""

    root: Path

    @classmethod
    def default(cls) -> Toolset:
        key = f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}"
        return cls(cache_root() / key)

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def is_built(self) -> bool:
        stamp = self.bin_dir / STAMP
        return stamp.is_file() and all(self.binary(name).is_file() for name in BINARIES)

    def versions(self) -> dict[str, str]:
        return json.loads((self.bin_dir / STAMP).read_text(encoding="utf-8"))


def _progress(message: str) -> None:
    print(f"[k8s build] {message}", flush=True)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise BuildError("the Go toolchain is not on PATH (nor at /usr/local/go/bin/go): the control plane is "
                         "built from Kubernetes' Go modules, so this machine needs Go 1.26 or newer")
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # -mod=mod: our build modules list only their top requirement; go adds what the packages import.
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": env.get("GOTOOLCHAIN", "local")})
    env.setdefault("GOPATH", str(Path.home() / "go"))
    return env


def _run_go(work: Path, *args: str, what: str, in_module: bool = True) -> str:
    started = time.monotonic()
    env = _go_env()
    if not in_module:
        env.pop("GOFLAGS")
    done = subprocess.run([_go(), *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise BuildError(f"{what} failed (go {' '.join(args[:2])}…, exit {done.returncode}):\n{tail}")
    _progress(f"{what}: done in {time.monotonic() - started:.0f} s")
    return done.stdout


def _write_module(work: Path, name: str, requires: str, replaces: Sequence[str] = ()) -> None:
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module edgecollab.invalid/{name}", "", "go 1.26.0", "", f"require {requires}", ""]
    if replaces:
        lines += ["replace (", *(f"\t{line}" for line in replaces), ")", ""]
    (work / "go.mod").write_text("\n".join(lines), encoding="utf-8")


def staging_replacements(kubernetes_go_mod: str, version: str) -> list[str]:
    """``MODULE => MODULE v0.X.Y`` for every staging module Kubernetes' go.mod replaces with a directory."""
    published = "v0" + version[2:] if version.startswith("v1.") else version
    modules = re.findall(r"^\s*(\S+)\s*=>\s*\./staging/\S+\s*$", kubernetes_go_mod, flags=re.MULTILINE)
    if not modules:
        raise BuildError("found no staging replacements in k8s.io/kubernetes's go.mod: its layout changed")
    return [f"{m} => {m} {published}" for m in modules if m not in UNPUBLISHED_STAGING]


def _kubernetes_go_mod(outside_any_module: Path) -> str:
    out = _run_go(outside_any_module, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}",
                  what=f"fetching k8s.io/kubernetes {KUBERNETES_VERSION}'s go.mod", in_module=False)
    return Path(json.loads(out)["GoMod"]).read_text(encoding="utf-8")


def _kube_ldflags() -> str:
    major, minor = KUBERNETES_VERSION[1:].split(".")[:2]
    stamps = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [f"-X {package}.gitVersion={KUBERNETES_VERSION}", f"-X {package}.gitMajor={major}",
                   f"-X {package}.gitMinor={minor}", f"-X {package}.gitTreeState=clean"]
    return " ".join(["-s", "-w", *stamps])


def _build_kubernetes(src: Path, out: Path) -> None:
    work = src / "kubernetes"
    replaces = staging_replacements(_kubernetes_go_mod(src), KUBERNETES_VERSION)
    _write_module(work, "kubernetes-build", f"k8s.io/kubernetes {KUBERNETES_VERSION}", replaces)
    _progress(f"building {', '.join(KUBE_COMMANDS)} from k8s.io/kubernetes {KUBERNETES_VERSION} "
              "(the longest step: about 10 CPU-minutes, once per machine)")
    _run_go(work, "build", "-trimpath", "-ldflags", _kube_ldflags(), "-o", f"{out}/",
            *(f"k8s.io/kubernetes/cmd/{command}" for command in KUBE_COMMANDS), what="kube-* build")


def _build_etcd(src: Path, out: Path) -> None:
    work = src / "etcd"
    _write_module(work, "etcd-build", f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}")
    _progress(f"building etcd from go.etcd.io/etcd/server/v3 {ETCD_VERSION}")
    _run_go(work, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3",
            what="etcd build")


def _build_kwok(src: Path, out: Path) -> None:
    work = src / "kwok"
    _write_module(work, "kwok-build", f"sigs.k8s.io/kwok {KWOK_VERSION}")
    _progress(f"building kwok from sigs.k8s.io/kwok {KWOK_VERSION}")
    _run_go(work, "build", "-trimpath", "-ldflags", f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION[1:]}",
            "-o", str(out / "kwok"), "sigs.k8s.io/kwok/cmd/kwok", what="kwok build")


def reported_version(binary: Path) -> str:
    """What ``BINARY --version`` prints (first line), or a BuildError saying why it printed nothing usable."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise BuildError(f"{binary} does not run: {exc}") from exc
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or not text:
        raise BuildError(f"{binary} --version failed (exit {done.returncode}): {text[:400]}")
    return text.splitlines()[0].strip()


def _check_versions(out: Path) -> dict[str, str]:
    expected = {"etcd": ETCD_VERSION[1:], "kwok": KWOK_VERSION[1:],
                **{command: KUBERNETES_VERSION for command in KUBE_COMMANDS}}
    found = {}
    for name, version in expected.items():
        line = reported_version(out / name)
        if version not in line:
            raise BuildError(f"{name} --version says {line!r}, not {version}: the build did not stamp its version")
        found[name] = line
        _progress(f"{name} --version: {line}")
    return found


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress(f"another build holds {root}/.lock; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_built(toolset: Toolset | None = None) -> Toolset:
    """The binaries, built first if this machine has not built them yet (progress on stdout)."""
    toolset = toolset or Toolset.default()
    if toolset.is_built():
        return toolset
    with _build_lock(toolset.root):
        if toolset.is_built():
            return toolset
        started = time.monotonic()
        _progress(f"building the Kubernetes control plane into {toolset.root} (once per machine)")
        src, staging = toolset.root / "src", toolset.root / "bin.partial"
        src.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        steps = {"etcd": _build_etcd, "kwok": _build_kwok}
        for name, build in steps.items():
            if not (staging / name).is_file():
                build(src, staging)
        if not all((staging / command).is_file() for command in KUBE_COMMANDS):
            _build_kubernetes(src, staging)
        versions = _check_versions(staging)
        (staging / STAMP).write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(toolset.bin_dir, ignore_errors=True)
        staging.rename(toolset.bin_dir)
        _progress(f"built in {time.monotonic() - started:.0f} s: {toolset.bin_dir}")
    return toolset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgesim.k8s_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--where", action="store_true", help="print the binaries' directory; build nothing")
    args = parser.parse_args(argv)
    toolset = Toolset.default()
    if args.where:
        print(toolset.bin_dir)
        return 0 if toolset.is_built() else 1
    try:
        ensure_built(toolset)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(toolset.bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
