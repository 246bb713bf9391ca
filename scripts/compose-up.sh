#!/usr/bin/env bash
# Starts the docker-compose cluster (3 coordinators + 3 nodes, each in its
# own container with its own IP) and deploys the model on it.
#
#   scripts/compose-up.sh            # then: scripts/compose-down.sh
#
# Steps: builds the inferno:local image (scripts/docker-image.sh), creates
# the CA and the member certificates under $INFERNO_COMPOSE_DIR/certs when
# missing, an admin key under $INFERNO_COMPOSE_DIR/secrets when missing,
# renders configs/compose for the network prefix, runs
# `docker-compose up -d`, deploys the model (POST /admin/v1/models on
# coordinator 1, retried until 200) and waits for GET /ready = 200.
#
# Environment (all optional):
#   INFERNO_BIN              the inferno binary (default target/release/inferno,
#                            else target/debug/inferno)
#   INFERNO_COMPOSE_PROJECT  compose project name (default inferno)
#   INFERNO_COMPOSE_DIR      state: CA, certificates and rendered configs
#                            (default target/compose/$INFERNO_COMPOSE_PROJECT)
#   INFERNO_COMPOSE_NET      the network's /24 prefix (default 10.213.47)
#   INFERNO_HTTP_PORT_1..3   API ports on 127.0.0.1 (default 18101..18103)
#   INFERNO_MODEL            the GGUF file (default $INFERNO_TEST_MODEL, else
#                            ~/.inferno/models/SmolLM2-135M-Instruct.Q4_1.gguf,
#                            fetched with `inferno pull` when missing)
#   INFERNO_COMPOSE_MODEL    the model's cluster name (default smollm2: the
#                            name in configs/compose/node-N.toml)
#   INFERNO_COMPOSE_REPLICAS desired replicas (default 2)
#   INFERNO_COMPOSE_DEPLOY   0 to skip deploying and waiting (default 1)
#   INFERNO_COMPOSE_TIMEOUT  seconds to wait for the deploy and /ready (default 180)
#   INFERNO_SKIP_IMAGE       1 to use the existing image as it is
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
project=${INFERNO_COMPOSE_PROJECT:-inferno}
state=${INFERNO_COMPOSE_DIR:-$root/target/compose/$project}
net=${INFERNO_COMPOSE_NET:-10.213.47}
model_name=${INFERNO_COMPOSE_MODEL:-smollm2}
replicas=${INFERNO_COMPOSE_REPLICAS:-2}
timeout=${INFERNO_COMPOSE_TIMEOUT:-180}

# shellcheck source=find-inferno.sh
source "$root/scripts/find-inferno.sh" ""

model=${INFERNO_MODEL:-${INFERNO_TEST_MODEL:-$HOME/.inferno/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
if [[ ! -f "$model" ]]; then
    echo "compose-up.sh: $model is missing; fetching it with \`inferno pull\`" >&2
    model=$("$bin" pull | tail -n 1)
fi
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")

if [[ "${INFERNO_SKIP_IMAGE:-0}" != 1 ]]; then
    INFERNO_BIN=$bin "$root/scripts/docker-image.sh" >/dev/null
fi

# Certificates: one CA (its key stays out of the containers), one
# certificate per member in the directory every container mounts.
ca=$state/ca
certs=$state/certs
if [[ ! -f "$ca/ca.pem" ]]; then
    "$bin" certs init --out "$ca" >/dev/null
fi
# The role is in each certificate (coordinators take raft traffic only from
# coordinator certificates, nodes take work only from them); they are
# issued afresh each time, so certificates of an older layout are replaced.
for member in coordinator-1 coordinator-2 coordinator-3 node-1 node-2 node-3; do
    "$bin" certs issue --ca "$ca" --name "$member" --role "${member%-*}" \
        --out "$certs" --force >/dev/null
done

# The admin key every coordinator bootstraps the cluster with (tenant
# `default`), mounted read-only at /secrets; only its SHA-256 is replicated.
secrets=$state/secrets
if [[ ! -f "$secrets/admin.key" ]]; then
    mkdir -p "$secrets"
    (umask 077 && printf 'inf-%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$secrets/admin.key")
fi
admin_key=$(tr -d '[:space:]' <"$secrets/admin.key")

# The member configs with this network's addresses.
configs=$state/configs
mkdir -p "$configs"
for f in "$root"/configs/compose/*.toml; do
    sed "s/10\.213\.47\./$net./g" "$f" >"$configs/$(basename "$f")"
done

export INFERNO_CERTS_DIR=$certs INFERNO_MODEL=$model INFERNO_COMPOSE_CONFIGS=$configs \
    INFERNO_COMPOSE_NET=$net INFERNO_SECRETS_DIR=$secrets
export INFERNO_HTTP_PORT_1=${INFERNO_HTTP_PORT_1:-18101} \
    INFERNO_HTTP_PORT_2=${INFERNO_HTTP_PORT_2:-18102} \
    INFERNO_HTTP_PORT_3=${INFERNO_HTTP_PORT_3:-18103}
docker-compose -p "$project" -f "$root/docker-compose.yml" up -d

api=127.0.0.1:$INFERNO_HTTP_PORT_1
if [[ "${INFERNO_COMPOSE_DEPLOY:-1}" == 1 ]]; then
    size=$(wc -c <"$model" | tr -d ' ')
    body=$(printf '{"name":"%s","source":"%s","format":"gguf","size_bytes":%s,"desired_replicas":%s}' \
        "$model_name" "/models/model.gguf" "$size" "$replicas")
    deadline=$((SECONDS + timeout))
    until curl -fsS -o /dev/null -m 10 -XPOST "http://$api/admin/v1/models" \
        -H "Authorization: Bearer $admin_key" \
        -H 'Content-Type: application/json' -d "$body" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "compose-up.sh: POST /admin/v1/models on $api failed for ${timeout}s; see \`docker-compose -p $project logs\`" >&2
            exit 1
        fi
        sleep 1
    done
    echo "deployed $model_name with $replicas replicas; waiting for a ready replica..." >&2
    until curl -fsS -o /dev/null -m 10 -H "Authorization: Bearer $admin_key" "http://$api/ready" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "compose-up.sh: GET /ready on $api not 200 after ${timeout}s; see \`docker-compose -p $project logs\`" >&2
            exit 1
        fi
        sleep 1
    done
fi

echo "Inferno compose cluster \"$project\" up: OpenAI API at http://127.0.0.1:$INFERNO_HTTP_PORT_1/v1," \
    "http://127.0.0.1:$INFERNO_HTTP_PORT_2/v1, http://127.0.0.1:$INFERNO_HTTP_PORT_3/v1 (model \"$model_name\")"
echo "  admin key: $secrets/admin.key (make inference keys with: inferno keys create --url http://$api --api-key-file $secrets/admin.key)"
echo "  try: curl http://$api/v1/chat/completions -H \"Authorization: Bearer \$(cat $secrets/admin.key)\" -H 'Content-Type: application/json' -d '{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'"
echo "  stop: INFERNO_COMPOSE_PROJECT=$project scripts/compose-down.sh"
