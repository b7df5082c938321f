#!/usr/bin/env bash
# The Secrets of a development release (namespace $1, default cag), created once with fresh random values and left
# alone after: the signing key (cag-auth), the dev Postgres password (cag-postgres-dev) and the URL the services use
# (cag-database), and one NATS URL per identity (cag-nats; the dev NATS has no authentication). Nothing here is
# stored in the repository. `tilt up` runs it before the services start.
set -euo pipefail
namespace="${1:-cag}"
kube=(kubectl --namespace "$namespace")

exists() { "${kube[@]}" get secret "$1" >/dev/null 2>&1; }
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"

exists cag-auth || "${kube[@]}" create secret generic cag-auth --from-literal=auth.key="$(random_hex 32)"

if ! exists cag-postgres-dev; then
    password="$(random_hex 16)"
    "${kube[@]}" create secret generic cag-postgres-dev --from-literal=password="$password"
    "${kube[@]}" delete secret cag-database --ignore-not-found
    "${kube[@]}" create secret generic cag-database \
        --from-literal=database-url="postgresql://cag:${password}@cag-postgres:5432/cag"
fi

if ! exists cag-nats; then
    urls=()
    for identity in registry cachepool router compiler fallback ops; do
        urls+=(--from-literal="$identity=nats://cag-nats:4222")
    done
    "${kube[@]}" create secret generic cag-nats "${urls[@]}"
fi
