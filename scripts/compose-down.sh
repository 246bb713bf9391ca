#!/usr/bin/env bash
# Stops the docker-compose cluster of scripts/compose-up.sh and removes its
# containers, network and volumes (the certificates under
# $INFERNO_COMPOSE_DIR stay; delete that directory to start afresh).
#
#   INFERNO_COMPOSE_PROJECT=inferno scripts/compose-down.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
project=${INFERNO_COMPOSE_PROJECT:-inferno}
docker-compose -p "$project" -f "$root/docker-compose.yml" down -v --remove-orphans --timeout 10
