#!/usr/bin/env bash
# Install what slurm/cluster.sh needs on a Debian/Ubuntu machine (run as root).
# Idempotent: packages already present are not reinstalled, apt is not touched at all then.
set -euo pipefail

# slurmd/slurmctld: the daemons; slurm-client: sbatch, squeue, scontrol, srun, sacct;
# munge: authentication; iproute2 + util-linux: namespaces, veth and bridge for --nodes 2;
# procps: pgrep/ps used to find daemons.
PACKAGES=(slurm-wlm slurm-client slurmd slurmctld munge iproute2 util-linux procps)

if [ "$(id -u)" != 0 ]; then
    echo "slurm/install.sh: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm/install.sh: all present (${PACKAGES[*]})"
    exit 0
fi

echo "slurm/install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps out mailers and docs. Where systemd runs, the package scripts
# may start munge (cluster.sh reuses a running munged); slurmd/slurmctld fail to start there
# without a config, which is fine: cluster.sh starts its own.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "slurm/install.sh: done; $(sinfo --version 2>/dev/null || true)"
