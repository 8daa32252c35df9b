-- wrk script for bench/http.py: optional request bodies from a template file whose
-- "{n}" becomes a number unique to the request, status codes counted, and one
-- line of JSON with the figures at the end ("JSON {...}").
--
--   wrk -t1 -c32 -d5s -s bench/wrk.lua URL -- [TEMPLATE RUN_ID]

local template = nil
local run_id = "0"
local counter = 0
codes = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  if args[1] and args[1] ~= "" then
    local file = assert(io.open(args[1], "rb"))
    template = file:read("*a")
    file:close()
    run_id = args[2] or "0"
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  if template == nil then
    return wrk.format()
  end
  counter = counter + 1
  local unique = run_id .. "-" .. counter
  local body = template:gsub("{n}", function() return unique end)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local key = tostring(status)
  codes[key] = (codes[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("codes")) do
      merged[code] = (merged[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', code, count))
  end
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.3f, "rate": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, '
      .. '"p99_ms": %.3f, "max_ms": %.3f, "codes": {%s}, "socket_errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    table.concat(parts, ", "),
    errors.connect + errors.read + errors.write + errors.timeout
  ))
end
