#!/bin/sh
# Creates the three Secrets deploy/k8s mounts, from a keys folder made by
#   intgrads-broker keys --dir KEYS --workers 1 --frontends 1
# Usage: deploy/k8s/secrets.sh KEYS [extra arguments for kubectl create, e.g. -n NAMESPACE]
# (with --dry-run=client -o yaml it prints them instead; no cluster needed then).
#
# Each pod gets only what it needs: the broker its key pair and the public keys it
# accepts (one worker key, one frontend key); workers and frontends the broker's
# public key and their own secret key. No pod but the broker sees the broker's
# secret key; a worker's key opens no frontend port and a frontend's no worker port.
set -eu
keys=${1:?usage: deploy/k8s/secrets.sh KEYS [kubectl create arguments]}
shift
for file in broker.key broker.key_secret worker0.key worker0.key_secret frontend0.key frontend0.key_secret; do
    [ -f "$keys/$file" ] || { echo "missing $keys/$file: run intgrads-broker keys --dir $keys" >&2; exit 1; }
done
kubectl create secret generic intgrads-broker-keys "$@" \
    --from-file=broker.key="$keys/broker.key" \
    --from-file=broker.key_secret="$keys/broker.key_secret" \
    --from-file=worker.key="$keys/worker0.key" \
    --from-file=frontend.key="$keys/frontend0.key"
kubectl create secret generic intgrads-worker-keys "$@" \
    --from-file=broker.key="$keys/broker.key" \
    --from-file=worker.key_secret="$keys/worker0.key_secret"
kubectl create secret generic intgrads-frontend-keys "$@" \
    --from-file=broker.key="$keys/broker.key" \
    --from-file=frontend.key_secret="$keys/frontend0.key_secret"
