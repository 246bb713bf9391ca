# Sourced by the scripts that need the `inferno` binary: sets `bin` to $1,
# else INFERNO_BIN, else target/release/inferno, else target/debug/inferno,
# and exits with a message naming the calling script if none is executable.
# Needs `root` (the repository root) to be set.
bin=${1:-${INFERNO_BIN:-}}
if [[ -z "$bin" ]]; then
    for candidate in "$root/target/release/inferno" "$root/target/debug/inferno"; do
        if [[ -x "$candidate" ]]; then
            bin=$candidate
            break
        fi
    done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "$(basename "$0"): no inferno binary (${bin:-none found}); run \`cargo build -p inferno-cli\` or set INFERNO_BIN" >&2
    exit 1
fi
