-- wrk script: single-event POST /v1/events with a unique event_id per request (no duplicates), so
-- every request is a real durable append. Usage:
--   wrk -t2 -c64 -d30s --latency -s bench/wrk/ingest.lua http://127.0.0.1:8080
-- Set BATCH=1000 in the environment for batches of that many events per request.
local counter = 0
local threads = {}
local batch = tonumber(os.getenv("BATCH") or "1")
local run = os.getenv("RUN") or tostring(os.time())

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function iso_now()
  return os.date("!%Y-%m-%dT%H:%M:%S.000Z", os.time() - 60)
end

local statuses = {"created", "allocated", "picked", "dispatched", "out_for_delivery", "delivered"}

function request()
  counter = counter + 1
  local at = iso_now()
  local parts = {}
  for i = 1, batch do
    local n = counter * batch + i
    local order = string.format("o-%s-%d-%d", run, tid, math.floor(n / 6))
    parts[i] = string.format(
      '{"event_id":"e-%s-%d-%d","order_id":"%s","status":"%s","occurred_at":"%s","carrier":"van-%d"}',
      run, tid, n, order, statuses[(n % 6) + 1], at, n % 50)
  end
  local body = batch == 1 and parts[1] or ("[" .. table.concat(parts, ",") .. "]")
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
  end
end
