#!/usr/bin/env bash
# The project's test command (the README's). Builds the CLI, fetches the default
# model with it if missing, then runs format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p inferno-cli
INFERNO_TEST_MODEL="${INFERNO_TEST_MODEL:-$(target/debug/inferno pull | tail -n1)}"
export INFERNO_TEST_MODEL
echo "test model: $INFERNO_TEST_MODEL"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
