#!/usr/bin/env bash
# Create a kind cluster with mock GPUs and deploy gpudra: build the image from this checkout, load it into
# the nodes, apply daemonset/overlays/mock and the DeviceClasses, wait for the plugin and its ResourceSlices.
# Needs kind, docker and kubectl. Env: CLUSTER (default gpudra), KIND_NODE_IMAGE (default: the images in
# hack/kind/cluster.yaml, Kubernetes 1.34), TIMEOUT (default 180s).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-gpudra}
TIMEOUT=${TIMEOUT:-180s}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE="gpudra:${VERSION}" # the tag the chart sets (its appVersion; daemonset/overlays/mock)

for tool in kind docker kubectl; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is not installed" >&2; exit 1; }
done
kc() { kubectl --context "kind-${CLUSTER}" "$@"; }

if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  kind create cluster --name "$CLUSTER" --config hack/kind/cluster.yaml --image "$KIND_NODE_IMAGE"
else
  kind create cluster --name "$CLUSTER" --config hack/kind/cluster.yaml
fi
docker build -f hack/Dockerfile --build-arg VERSION="$VERSION" -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

kc apply -k daemonset/overlays/mock
for class in deviceclasses/*.gpudra.io.yaml; do
  kc apply -f "$class"
done
kc -n gpudra-system rollout status daemonset/gpudra-mock --timeout="$TIMEOUT"

echo "waiting for the plugin's ResourceSlices"
for _ in $(seq 90); do
  if [ -n "$(kc get resourceslices --field-selector spec.driver=gpudra.io -o name)" ]; then
    kc get resourceslices --field-selector spec.driver=gpudra.io
    exit 0
  fi
  sleep 2
done
echo "up.sh: no ResourceSlice of gpudra.io after 180 s" >&2
kc -n gpudra-system logs daemonset/gpudra-mock --tail=50 >&2 || true
exit 1
