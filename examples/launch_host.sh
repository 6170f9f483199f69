#!/usr/bin/env bash
# One command per host for a multi-host run (shared checkpoint folder, e.g. NFS).
#
#   controller host:  examples/launch_host.sh controller
#   every GPU host:   CONTROLLER=tcp://ctl-host:5555 examples/launch_host.sh worker
#
# Keys (once): pbt-actors keys generate --dir keys --name controller
#              pbt-actors keys generate --dir keys --name "$(hostname)"   # on each worker host
# and copy each worker's keys/<host>.key into the controller's keys/authorized/ folder.
set -euo pipefail
EXPERIMENT=${EXPERIMENT:-examples/digits.py}
SHARED=${SHARED:-/shared/pbt}            # seen by every host
KEYS=${KEYS:-$SHARED/keys}
case "${1:-}" in
  controller)
    # --checkpoint-root: the workers' root, so that retention can delete what no trial needs
    exec pbt-actors controller "$EXPERIMENT" --store "$SHARED/store" --checkpoint-root "$SHARED/checkpoints" \
      --bind "${BIND:-tcp://0.0.0.0:5555}" \
      --curve-secret "$KEYS/controller.key_secret" --authorized-keys "$KEYS/authorized" ;;
  worker)
    exec pbt-actors worker "$EXPERIMENT" --connect "${CONTROLLER:?set CONTROLLER=tcp://host:port}" \
      --devices "${DEVICES:-all}" --checkpoint-root "$SHARED/checkpoints" \
      --curve-server-key "$KEYS/controller.key" --curve-secret "$KEYS/$(hostname).key_secret" ;;
  *)
    echo "usage: $0 controller|worker" >&2; exit 2 ;;
esac
