#!/usr/bin/env bash
# The submit path over HTTP: `ferry dev` (embedded stack, rate limit off) against the same
# axum server answering a constant 202 (`ferry dev --constant-202`, the ceiling), loaded by
# wrk with benches/submit.lua, alternating API/ceiling for a few rounds. Prints a markdown
# table of medians over rounds. Loopback only, fixed duration.
#
# Usage: benches/submit.sh
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10s]  WARMUP [2s]  THREADS [1]  CONNECTIONS [32]
#   SKIP_BUILD=1 to use the existing target/release/ferry; FERRY_BIN to name another binary.
#   API_ARGS: more flags for the API's `ferry dev` (`--no-executor`: the submit path alone,
#   without executor processes running the submitted jobs on the same cores).
#   RUST_LOG is passed to both servers (their default: info, one log line per request).
# wrk and the servers share this machine's cores; with 2 cores keep THREADS at 1 or 2.
# Exits 1 if the API answered anything but 202 or wrk saw socket errors.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-32}
FERRY=${FERRY_BIN:-target/release/ferry}
LUA=benches/submit.lua

die() { echo "submit.sh: $*" >&2; exit 2; }
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
command -v curl >/dev/null || die "curl is not installed"

if [[ -z "${SKIP_BUILD:-}" && -z "${FERRY_BIN:-}" ]]; then
  echo "building ferry (release)..." >&2
  cargo build --release -p ferry-cli >&2
fi
[[ -x "$FERRY" ]] || die "no binary at $FERRY"

work=$(mktemp -d -t ferry-submit-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on (a connect to it fails); the server fails loudly if it lost the race.
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}
PORT_API=$(free_port)
PORT_CEIL=$(free_port)
while [[ "$PORT_CEIL" == "$PORT_API" ]]; do PORT_CEIL=$(free_port); done
API=http://127.0.0.1:$PORT_API
CEIL=http://127.0.0.1:$PORT_CEIL

# shellcheck disable=SC2086 # API_ARGS is a list of flags
"$FERRY" dev --http "127.0.0.1:$PORT_API" --rate-limit 0 ${API_ARGS:-} >"$work/api.out" 2>"$work/api.err" &
pids+=($!); PID_API=$!
"$FERRY" dev --http "127.0.0.1:$PORT_CEIL" --constant-202 >"$work/ceil.out" 2>"$work/ceil.err" &
pids+=($!); PID_CEIL=$!

# Waits until $2 answers $3 (a status code, or "any"); fails if process $1 exits.
wait_up() {
  local pid=$1 url=$2 want=$3 code
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$work"/*.err >&2; die "server for $url exited"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    if [[ "$want" == any && "$code" != 000 ]] || [[ "$code" == "$want" ]]; then return; fi
    sleep 0.1
  done
  die "$url did not come up in 30 s"
}
wait_up "$PID_API" "$API/healthz" 200
wait_up "$PID_CEIL" "$CEIL/healthz" any

# One request by hand first: the API must accept the exact job wrk will send.
body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$LUA")
code=$(curl -s -o "$work/first.json" -w '%{http_code}' -X POST "$API/v1/jobs" \
  -H 'Authorization: Bearer fry_dev_local_key' -H 'Content-Type: application/json' --data "$body")
[[ "$code" == 202 ]] || { cat "$work/first.json" >&2; die "the API answered $code, not 202, to the job"; }

# Runs wrk against $2 and appends "label round FERRY_RESULT-fields" to $work/results.
run_wrk() {
  local label=$1 url=$2 round=$3 dur=$4 out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --latency -s "$LUA" "$url/v1/jobs")
  echo "$out" >>"$work/wrk.log"
  local line
  line=$(grep '^FERRY_RESULT' <<<"$out") || { echo "$out" >&2; die "no result line from wrk"; }
  echo "$label $round ${line#FERRY_RESULT }" >>"$work/results"
}
: >"$work/results"
echo "warming up ($WARMUP each)..." >&2
run_wrk warmup-api "$API" 0 "$WARMUP"
run_wrk warmup-ceiling "$CEIL" 0 "$WARMUP"
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS: api, then ceiling ($DURATION each)..." >&2
  run_wrk api "$API" "$r" "$DURATION"
  run_wrk ceiling "$CEIL" "$r" "$DURATION"
done

rss_api=$(ps -o rss= -p "$PID_API" | tr -d ' ')
rss_ceil=$(ps -o rss= -p "$PID_CEIL" | tr -d ' ')
log_lines=$(wc -l <"$work/api.err")
# The level as a word of its own: ULIDs in the log can contain "WARN".
log_problems=$(grep -cE '(^|[^A-Z0-9])(WARN|ERROR)([^A-Z0-9]|$)' "$work/api.err" || true)

echo
echo "## submit: ferry dev vs constant-202 ceiling (wrk)"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
echo "- machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB memory; wrk and both servers share these cores"
echo "- load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s $LUA, $ROUNDS rounds alternating api/ceiling after a $WARMUP warm-up each; RUST_LOG=${RUST_LOG:-unset (info)}"
echo "- $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo
echo "Per round:"
echo
echo "| round | server | requests/s | p50 | p99 | non-202 | socket errors |"
echo "|---:|---|---:|---:|---:|---:|---:|"
awk '
  function f(k,   i, kv) { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } }
  $2 > 0 { printf "| %d | %s | %.0f | %.2f ms | %.2f ms | %s%s | %d |\n", $2, $1, f("rps"), f("p50_us")/1000, f("p99_us")/1000,
           f("non202"), (f("statuses") == "-" ? "" : " (" f("statuses") ")"),
           f("connect_err") + f("read_err") + f("write_err") + f("timeout_err") }
' "$work/results"
echo
echo "Medians over rounds:"
echo
awk '
  function f(k,   i, kv) { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } }
  function med(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  $2 > 0 { n[$1]++; rps[$1, n[$1]] = f("rps"); p50[$1, n[$1]] = f("p50_us"); p99[$1, n[$1]] = f("p99_us") }
  END {
    for (s in n) { for (i = 1; i <= n[s]; i++) { a[i] = rps[s, i] } R[s] = med(a, n[s])
                   for (i = 1; i <= n[s]; i++) { a[i] = p50[s, i] } P[s] = med(a, n[s])
                   for (i = 1; i <= n[s]; i++) { a[i] = p99[s, i] } Q[s] = med(a, n[s]) }
    print "| server | requests/s | p50 | p99 |"
    print "|---|---:|---:|---:|"
    printf "| ferry dev (API, embedded, rate limit off) | %.0f | %.2f ms | %.2f ms |\n", R["api"], P["api"]/1000, Q["api"]/1000
    printf "| ferry dev --constant-202 (ceiling) | %.0f | %.2f ms | %.2f ms |\n", R["ceiling"], P["ceiling"]/1000, Q["ceiling"]/1000
    printf "| API / ceiling | %.2f | %.2f× | %.2f× |\n", R["api"]/R["ceiling"], P["api"]/P["ceiling"], Q["api"]/Q["ceiling"]
  }
' "$work/results"
echo
echo "- API server at exit: RSS $((rss_api / 1024)) MiB (the embedded store keeps every job submitted), $log_lines log lines, $log_problems WARN/ERROR lines; ceiling RSS $((rss_ceil / 1024)) MiB"
if [[ "$log_problems" != 0 ]]; then
  echo; echo "First WARN/ERROR lines of the API's log:"; echo; echo '```'
  grep -E '(^|[^A-Z0-9])(WARN|ERROR)([^A-Z0-9]|$)' "$work/api.err" | sed 's/\x1b\[[0-9;]*m//g' | head -5
  echo '```'
fi

bad=$(awk '
  function f(k,   i, kv) { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } }
  { b += f("non202") + f("connect_err") + f("read_err") + f("write_err") + f("timeout_err") } END { print b + 0 }
' "$work/results")
if [[ "$bad" != 0 ]]; then
  echo "submit.sh: $bad non-202 answers or socket errors (see the per-round table); wrk output in $work/wrk.log" >&2
  trap - EXIT; cleanup; exit 1
fi
rm -rf "$work"
