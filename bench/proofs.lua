-- wrk script of the benchmark: each request carries the next pre-signed
-- DPoP proof of this thread's own file (bench/proofgen.py writes
-- proofs-<thread>.txt), the access token, an Origin and a small JSON body.
-- No proof is sent twice: a thread that runs out sends no DPoP header at
-- all, which ETS answers 401 and the run counts as failed.
--
--   wrk ... -s bench/proofs.lua URL -- PROOFDIR TOKEN ORIGIN METHOD [reuse]
--
-- "reuse" sends the first proof on every request (for the cases with no
-- gateway checking it: the bytes on the wire stay the same).
-- At the end one line is printed: BENCH_RESULT {json}.

local counter = 0
local threads = {}

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   local dir = args[1]
   token = args[2]
   origin = args[3]
   method = args[4] or "POST"
   reuse = args[5] == "reuse"
   proofs = {}
   n = 0
   used = 0
   for line in io.lines(dir .. "/proofs-" .. (reuse and 1 or id) .. ".txt") do
      n = n + 1
      proofs[n] = line
      if reuse then break end
   end
   body = '{"q":"bench","n":1}'
   headers = {
      ["Origin"] = origin,
      ["Authorization"] = "DPoP " .. token,
      ["Content-Type"] = "application/json",
   }
end

function request()
   used = used + 1
   if reuse then
      headers["DPoP"] = proofs[1]
   elseif used <= n then
      headers["DPoP"] = proofs[used]
   else
      headers["DPoP"] = nil
   end
   return wrk.format(method, nil, headers, method == "GET" and nil or body)
end

function done(summary, latency, requests)
   -- "proofs" is 0 when one proof is reused (nothing checks it then).
   local available, sent = 0, 0
   for _, thread in ipairs(threads) do
      if not thread:get("reuse") then
         available = available + thread:get("n")
      end
      sent = sent + thread:get("used")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,' ..
      '"p99_ms":%.3f,"max_ms":%.3f,"status_errors":%d,"socket_errors":%d,"proofs":%d,"sent":%d}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.status, e.connect + e.read + e.write + e.timeout, available, sent))
end
