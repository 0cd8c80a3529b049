#!/usr/bin/env bash
# The Lambda packages: size and local cold init, beside a minimal lambda_http function.
# Builds the three Lambdas and benches/lambda-min with the `lambda-release` profile (and the api
# Lambda and lambda-min with plain `release`, for comparison), zips each binary as
# `bootstrap` the way `cargo lambda build --output-format zip` does (zip -9), prints a size
# table, then runs the `lambda_init` bench (benches/lambda_init.rs) on the binaries.
# Usage: benches/lambda.sh   Env: ROUNDS [30], SKIP_RELEASE=1 (the lambda-release profile only).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(-p ferry-api-lambda -p ferry-ws-lambda -p ferry-dispatcher-lambda -p ferry-lambda-min)
cargo build --profile lambda-release "${pkgs[@]}" >&2
[ -n "${SKIP_RELEASE:-}" ] || cargo build --release -p ferry-api-lambda -p ferry-lambda-min >&2

out="target/lambda-zips"
rm -rf "$out" && mkdir -p "$out"
bins=()
row() { # name path
    local dir="$out/$1"
    mkdir -p "$dir" && cp "$2" "$dir/bootstrap"
    (cd "$dir" && zip -q -9 bootstrap.zip bootstrap)
    local raw stripped zipped
    raw=$(stat -c %s "$2")
    strip -o "$dir/stripped" "$2" && stripped=$(stat -c %s "$dir/stripped")
    zipped=$(stat -c %s "$dir/bootstrap.zip")
    printf '| %s | %.1f | %.1f | %.2f |\n' "$1" "$(bc -l <<<"$raw/1048576")" "$(bc -l <<<"$stripped/1048576")" "$(bc -l <<<"$zipped/1048576")"
    bins+=("$1=$PWD/$2")
}
echo "| binary | file (MiB) | stripped (MiB) | zip -9 (MiB) |"
echo "|---|---:|---:|---:|"
row lambda-min target/lambda-release/lambda-min
row api target/lambda-release/api
row ws target/lambda-release/ws
row dispatcher target/lambda-release/dispatcher
if [ -z "${SKIP_RELEASE:-}" ]; then
    row lambda-min@release target/release/lambda-min
    row api@release target/release/api
fi
echo
FERRY_LAMBDA_BINS="$(IFS=,; echo "${bins[*]}")" cargo bench -p ferry-benches --bench lambda_init
