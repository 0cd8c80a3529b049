-- wrk script for benches/submit.sh: POST /v1/jobs with the dev key, as `ferry submit` would.
-- Counts answers other than 202 per thread and prints, in `done`, one machine-readable line:
--   FERRY_RESULT requests=N duration_us=N rps=X p50_us=N p99_us=N non202=N statuses=CODE:N,...
--     connect_err=N read_err=N write_err=N timeout_err=N
-- (wrk calls `response` for every answer once the script defines it, for both servers alike.)

wrk.method = "POST"
wrk.path = "/v1/jobs"
wrk.body = '{"model":"tiny-llama","input":{"prompt":"hello"},"params":{"max_new_tokens":16}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer fry_dev_local_key"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non202 = 0
  statuses = {}
end

function response(status, headers, body)
  if status ~= 202 then
    non202 = non202 + 1
    local k = tostring(status)
    statuses[k] = (statuses[k] or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  local by_status = {}
  for _, t in ipairs(threads) do
    bad = bad + t:get("non202")
    for code, n in pairs(t:get("statuses")) do
      by_status[code] = (by_status[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(by_status) do
    table.insert(parts, code .. ":" .. n)
  end
  local e = summary.errors
  io.write(string.format(
    "FERRY_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d non202=%d statuses=%s connect_err=%d read_err=%d write_err=%d timeout_err=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50.0), latency:percentile(99.0), bad,
    (#parts > 0) and table.concat(parts, ",") or "-",
    e.connect, e.read, e.write, e.timeout))
end
