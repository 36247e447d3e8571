# shellcheck shell=bash
# Helpers of hack/kind/e2e.sh, apart so that tests/unit/test_kind_scripts.py can run them without a cluster.

# env_key NAME FIELD: the variable gpudra's mock CDI spec sets for device NAME, as env_key() in
# driver/gpudra/edits.py: GPUDRA_<NAME>_<FIELD>, upper case, every character outside [A-Z0-9_] as "_".
env_key() {
  printf 'GPUDRA_%s\n' "$(printf '%s_%s' "$1" "$2" | LC_ALL=C tr '[:lower:]' '[:upper:]' | LC_ALL=C tr -c 'A-Z0-9_' '_')"
}

# pod_claims POD: reads "name|uid|reserved-for pod names|allocated devices" lines (one per ResourceClaim) and
# prints "uid|devices" for each claim reserved for POD.
pod_claims() {
  awk -F'|' -v pod="$1" '{
    n = split($3, users, " ")
    for (i = 1; i <= n; i++) if (users[i] == pod) { print $2 "|" $4; break }
  }'
}

# device_keys: reads device names (separated by blanks or newlines); prints the sorted GPUDRA_<NAME>_UUID keys.
device_keys() {
  local dev
  tr -s '[:blank:]' '\n' | while read -r dev; do
    if [ -n "$dev" ]; then env_key "$dev" UUID; fi
  done | LC_ALL=C sort -u
}

# description_files: reads "uid|devices" lines (pod_claims' output); prints the description file of each device
# as the container sees it, /var/run/gpudra/devices/<uid>-<device>.json (DEVICE_DESCRIPTION_DIR in edits.py).
description_files() {
  local uid devs dev
  while IFS='|' read -r uid devs; do
    for dev in $devs; do printf '/var/run/gpudra/devices/%s-%s.json\n' "$uid" "$dev"; done
  done
}

# uuid_keys: reads `env` output; prints the sorted names of the GPUDRA_*_UUID variables.
uuid_keys() {
  LC_ALL=C sed -n 's/^\(GPUDRA_[A-Z0-9_]*_UUID\)=.*/\1/p' | LC_ALL=C sort -u
}

# skip_reason SCENARIO FILE: prints the reason FILE gives for skipping SCENARIO ("<scenario> <reason>" lines,
# "#" comments); fails when it is not listed.
skip_reason() {
  awk -v s="$1" '$1 == s { $1 = ""; sub(/^ +/, ""); print; found = 1 } END { exit !found }' "$2"
}
