#!/usr/bin/env bash
# End-to-end on k3d (k3s in Docker): a hub cluster and two edge clusters, the hub and agents installed with
# the project's Helm charts, one Component applied, and a check that it runs on both edge clusters.
#
#   examples/k3d/run.sh            # needs docker, k3d, kubectl and helm on PATH; removes its clusters at the end
#   KEEP=1 examples/k3d/run.sh     # leaves the clusters up
#
# Not run on the project's CI machines (no Docker there): tests/e2e/test_k3d.py runs it where docker and k3d
# exist and skips with that reason elsewhere. Without Docker, `make demo RUNTIME=kubernetes` runs an agent's
# kubernetes runtime against a control plane built on the machine itself (one node; no containers run).
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in docker k3d kubectl helm; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH (this example needs docker, k3d, kubectl, helm)" >&2; exit 2; }
done

IMAGE=edgecollab:0.1.0
HUB=ec-hub
EDGES=(ec-edge-a ec-edge-b)
WORK=$(mktemp -d)
cleanup() {
    [[ "${KEEP:-}" == 1 ]] && { echo "clusters kept: $HUB ${EDGES[*]}"; return; }
    k3d cluster delete "$HUB" "${EDGES[@]}" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n=== %s\n' "$*"; }

step "Building $IMAGE from the Containerfile"
docker build -q -t "$IMAGE" -f Containerfile .

step "Creating the hub cluster (API 8470 and broker 8883 published on the host) and two edge clusters"
k3d cluster create "$HUB" --wait -p "8470:8470@loadbalancer" -p "8883:8883@loadbalancer"
for edge in "${EDGES[@]}"; do k3d cluster create "$edge" --wait --no-lb; done
k3d image import "$IMAGE" -c "$HUB" "${EDGES[@]}"
# The example chart's image (no registry is needed): the tar `make deps` builds from busybox-static.
make -s deps >/dev/null
docker load -q -i .build/edgecollab-busybox.tar
k3d image import localhost/edgecollab-busybox:1 -c "${EDGES[@]}"

# Edge clusters reach the hub cluster's load balancer through the Docker host.
HUB_NAME=host.k3d.internal
step "Installing charts/edgehub in $HUB"
kubectl config use-context "k3d-$HUB"
helm install edgehub charts/edgehub --wait --timeout 5m \
    --set image.tag=0.1.0 --set service.type=LoadBalancer \
    --set "service.extraNames={$HUB_NAME}" \
    --set "settings.allowed_hosts={$HUB_NAME,127.0.0.1}" \
    --set "settings.mqtt_advertise_url=mqtts://$HUB_NAME:8883"
kubectl exec deploy/edgehub -c hub -- cat /data/hub/admin-token > "$WORK/admin-token"
kubectl exec deploy/edgehub -c hub -- cat /data/hub/hub-ca.crt > "$WORK/hub-ca.crt"
export EDGECOLLAB_HUB=https://127.0.0.1:8470 EDGECOLLAB_TOKEN_FILE="$WORK/admin-token" EDGECOLLAB_CA_FILE="$WORK/hub-ca.crt"

for edge in "${EDGES[@]}"; do
    step "Installing charts/edgeagent in $edge (pool k3s)"
    token=$(.venv/bin/edgectl token create --pool k3s --ttl 15m)
    kubectl config use-context "k3d-$edge"
    helm install edgeagent charts/edgeagent --wait --timeout 5m \
        --set image.tag=0.1.0 --set "hub.url=https://$HUB_NAME:8470" \
        --set-file hub.caCert="$WORK/hub-ca.crt" --set "joinToken.value=$token" --set node.pool=k3s
done

step "Applying a Component that targets pool k3s"
cat > "$WORK/web.yaml" <<YAML
apiVersion: edgecollab.io/v1alpha1
kind: Component
metadata: {name: web, namespace: demo}
spec:
  chart: $(pwd)/examples/web/chart
  values: {message: "hello from k3d"}
  edge: {nodePools: [k3s]}
YAML
.venv/bin/edgectl apply -f "$WORK/web.yaml"

step "Waiting for demo/web on both edge clusters"
for _ in $(seq 1 60); do
    ready=$(.venv/bin/edgectl get components -o json | python3 -c 'import json,sys; c=[x for x in json.load(sys.stdin) if x["name"]=="web"]; print(c[0]["deployed"] if c else 0)')
    [[ "$ready" == 2 ]] && break
    sleep 5
done
[[ "$ready" == 2 ]] || { echo "error: demo/web is ready on $ready of 2 edge clusters" >&2; .venv/bin/edgectl describe component demo/web >&2; exit 1; }
for edge in "${EDGES[@]}"; do
    kubectl --context "k3d-$edge" -n demo rollout status deploy --timeout 60s
done
echo "demo/web runs on both edge clusters"
