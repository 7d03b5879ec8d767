-- wrk script of the issuance case: POST /tvm/issue with a fixed public JWK
-- (issuance spends no proof) and an allowed Origin.
--   wrk ... -s bench/issue.lua URL -- JWK_JSON ORIGIN
function init(args)
   wrk.method = "POST"
   wrk.body = '{"dpopPublicJwk":' .. args[1] .. '}'
   wrk.headers["Origin"] = args[2]
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,' ..
      '"p99_ms":%.3f,"max_ms":%.3f,"status_errors":%d,"socket_errors":%d,"proofs":0,"sent":%d}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
