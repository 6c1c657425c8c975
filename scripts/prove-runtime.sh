#!/usr/bin/env bash
# Prove that podman can play a pod on this machine, as the agent will, before any test
# or demo relies on it.
#
#   scripts/prove-runtime.sh [BUILD_DIR]      (default: .build)
#
# Under a private, throwaway storage root it imports the demo image, plays a
# one-container pod of it with `podman kube play`, checks that the container
# runs, and removes everything. podman's defaults are tried first; only if they
# fail, a containers.conf that selects runc and keeps ulimits at the host's
# (some machines refuse crun on hybrid cgroups, or raising ulimits). The answer
# is left for the demo and the tests:
#   BUILD_DIR/podman/containers.conf             when that file is needed here
#   BUILD_DIR/podman/containers.conf.not-needed  when podman's defaults work
# When neither works it exits 1 naming the step that failed and podman's error.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${1:-.build}"
image_tar="$build/edgecollab-busybox.tar"
image="localhost/edgecollab-busybox:1"
decision="$build/podman"
mkdir -p "$decision"
[[ -f "$image_tar" ]] || bash scripts/build-demo-image.sh "$image_tar" >/dev/null

# Short paths under /tmp: podman's sockets live under the run root (108-byte limit).
base="$(mktemp -d /tmp/ec-prove.XXXXXX)"
podman_args=(--root "$base/root" --runroot "$base/run" --tmpdir "$base/tmp")

cleanup() {
    podman "${podman_args[@]}" pod rm --all --force --time 0 >/dev/null 2>&1 || true
    podman "${podman_args[@]}" rm --all --force --time 0 >/dev/null 2>&1 || true
    # Storage mounts (overlay, shm) go before the directory can.
    awk -v base="$base/" 'index($5, base) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r mount; do umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true; done
    rm -rf "$base"
}
trap cleanup EXIT

cat >"$base/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: edgecollab-prove
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: $image
      command: ["sleep", "60"]
EOF

runc_conf="$base/runc.conf"
cat >"$runc_conf" <<'EOF'
# Written by scripts/prove-runtime.sh: this machine's podman cannot run pods with
# its defaults (crun on hybrid cgroups, or ulimits above the host's are refused).
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
EOF

failures=""
# try LABEL CONF: play and remove the pod with CONF ("" for podman's defaults).
try() {
    local label="$1" conf="$2" out step
    local -a env=()
    [[ -n "$conf" ]] && env=(CONTAINERS_CONF="$conf")
    run() { env "${env[@]}" podman "${podman_args[@]}" "$@" 2>&1; }
    step="import the demo image"
    out=$(run image exists "$image" || run import --quiet --change 'ENV=PATH=/bin' --change 'CMD ["/bin/sh"]' \
        "$image_tar" "$image") || { failures+=$'\n'"  with $label: $step failed: $out"; return 1; }
    step="play a one-container pod (podman kube play)"
    out=$(run kube play --network none "$base/pod.yaml") || {
        failures+=$'\n'"  with $label: $step failed: $out"
        run pod rm --all --force --time 0 >/dev/null || true
        return 1
    }
    step="see its container running"
    out=$(run container inspect --format '{{.State.Status}}' edgecollab-prove-main) && [[ "$out" == running ]] || {
        failures+=$'\n'"  with $label: $step failed: state ${out:-unknown}"
        run pod rm --all --force --time 0 >/dev/null || true
        return 1
    }
    step="remove the pod (podman kube down)"
    out=$(run kube down "$base/pod.yaml") || { failures+=$'\n'"  with $label: $step failed: $out"; return 1; }
    return 0
}

if try "podman's defaults" ""; then
    rm -f "$decision/containers.conf"
    echo "podman's defaults run pods on this machine" >"$decision/containers.conf.not-needed"
    echo "podman runtime proven: a pod of $image played and removed (podman's defaults)"
elif try "a runc containers.conf" "$runc_conf"; then
    rm -f "$decision/containers.conf.not-needed"
    cp "$runc_conf" "$decision/containers.conf"
    printf '%s\n' "$failures" >"$decision/defaults-failure.log"
    echo "podman runtime proven: a pod of $image played and removed with $decision/containers.conf" \
        "(podman's defaults fail here: see $decision/defaults-failure.log)"
else
    echo "error: podman cannot run a pod on this machine.$failures" >&2
    [[ "$failures" == *catatonit* ]] && echo "hint: podman builds its pause image from catatonit: apt-get install catatonit" >&2
    echo "Fix the first error above ('podman info' tells more); nothing else will work until it is." >&2
    exit 1
fi
