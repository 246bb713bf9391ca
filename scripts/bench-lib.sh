# Sourced by the benchmark scripts that start servers: a scratch directory
# `work`, the `pids` of what they start (stopped, then the directory removed,
# when the script exits), `free_port` and `wait_ready`.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url [API key file: waited for, then sent]
  for _ in $(seq 1 600); do
    if [[ -z ${2:-} ]]; then
      curl -sf "$1" >/dev/null 2>&1 && return 0
    elif [[ -s $2 ]]; then
      curl -sf -H "Authorization: Bearer $(cat "$2")" "$1" >/dev/null 2>&1 && return 0
    fi
    sleep 0.5
  done
  echo "not ready: $1" >&2; return 1
}
