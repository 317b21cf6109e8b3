-- wrk script: GET /v1/orders/{id} over orders written by `trackctl`-less seeding (see RESULTS.md).
-- ORDERS: how many orders o-seed-<n> exist (default 100000).
local orders = tonumber(os.getenv("ORDERS") or "100000")
function request()
  return wrk.format("GET", string.format("/v1/orders/o-seed-%d", math.random(0, orders - 1)))
end
function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
