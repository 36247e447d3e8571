#!/usr/bin/env bash
# Delete the kind cluster of hack/kind/up.sh. Env: CLUSTER (default gpudra).
set -euo pipefail
kind delete cluster --name "${CLUSTER:-gpudra}"
