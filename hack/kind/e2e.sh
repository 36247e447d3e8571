#!/usr/bin/env bash
# End-to-end test on the cluster of hack/kind/up.sh. Every example in deviceclasses/examples/ (except those
# hack/kind/e2e-skip.txt lists, with its reason) is applied into a namespace of its own; each of its pods must
# become Ready and see the GPUDRA_<DEVICE>_UUID variables of exactly the devices allocated to its claims, and
# each device's description file read-only. The namespace is then deleted. At the end no CDI spec of gpudra
# may be left on any node. Env: CLUSTER (default gpudra), TIMEOUT (default 180s), CLEANUP_WAIT (seconds to
# wait for the CDI specs to go, default 120).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=hack/kind/lib.sh
source hack/kind/lib.sh

CLUSTER=${CLUSTER:-gpudra}
TIMEOUT=${TIMEOUT:-180s}
CLEANUP_WAIT=${CLEANUP_WAIT:-120}
kc() { kubectl --context "kind-${CLUSTER}" "$@"; }

# check_pod NS POD CLAIMS: CLAIMS holds one "name|uid|reserved-for|devices" line per claim in NS.
check_pod() {
  local ns=$1 pod=$2 claims=$3 mine want got uid file
  mine=$(printf '%s\n' "$claims" | pod_claims "$pod")
  want=$(printf '%s\n' "$mine" | cut -d'|' -f2 | device_keys)
  got=$(kc exec -n "$ns" "$pod" -- env | uuid_keys)
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    echo "  $pod: expected variables [$(echo "$want" | xargs)], found [$(echo "$got" | xargs)]"
    return 1
  fi
  for file in $(printf '%s\n' "$mine" | description_files); do
    if ! kc exec -n "$ns" "$pod" -- sh -c "test -r $file && ! (echo >> $file) 2>/dev/null"; then
      echo "  $pod: $file is missing or writable"
      return 1
    fi
  done
  echo "  $pod: $(echo "$got" | xargs)"
}

check_namespace() {
  local ns=$1 claims pod
  claims=$(kc get resourceclaims -n "$ns" -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.metadata.uid}{"|"}{.status.reservedFor[*].name}{"|"}{.status.allocation.devices.results[*].device}{"\n"}{end}')
  for pod in $(kc get pods -n "$ns" -o jsonpath='{.items[*].metadata.name}'); do
    check_pod "$ns" "$pod" "$claims" || return 1
  done
}

# The CDI spec files gpudra leaves on the nodes (none once every claim is unprepared).
leftover_specs() {
  local node
  for node in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$node" sh -c 'ls /var/run/cdi/k8s.gpudra.io-claim_*.yaml 2>/dev/null || true'
  done
}

failed=()
for dir in deviceclasses/examples/*/; do
  scenario=$(basename "$dir")
  if reason=$(skip_reason "$scenario" hack/kind/e2e-skip.txt); then
    echo "SKIP $scenario: $reason"
    continue
  fi
  ns="gpudra-e2e-${scenario}"
  kc create namespace "$ns"
  kc apply -n "$ns" -f "$dir"
  if kc wait -n "$ns" --for=condition=Ready pod --all --timeout="$TIMEOUT" && check_namespace "$ns"; then
    echo "PASS $scenario"
  else
    echo "FAIL $scenario"
    kc get -n "$ns" pods,resourceclaims -o wide || true
    failed+=("$scenario")
  fi
  kc delete namespace "$ns" --timeout="$TIMEOUT"
done

echo "waiting for the CDI specs to be removed"
for _ in $(seq $((CLEANUP_WAIT / 2))); do
  [ -z "$(leftover_specs)" ] && break
  sleep 2
done
if [ -n "$(leftover_specs)" ]; then
  echo "FAIL CDI specs left behind:"
  leftover_specs
  failed+=("cdi-cleanup")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "e2e failed: ${failed[*]}"
  exit 1
fi
echo "e2e passed"
