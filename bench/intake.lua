-- wrk script: posts signed dbt Cloud webhooks, each with its own eventId, so that every
-- request to freshet is a new event that must be journaled. Signatures are precomputed
-- by bench/run (wrk's Lua has no HMAC) into $FRESHET_BENCH_SIGS, one per line.
-- The signatures stay one string (65 bytes a line), not a table of millions of strings:
-- LuaJIT's collector traverses a table whole, in one step, and with two million entries
-- that pause showed up as a wrk thread stalling for a few hundred milliseconds, which
-- wrk counted as freshet's latency (bench/README.md, fifth session).
local sigs = nil
local sig_count = 0
local template = nil
local thread_count = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("FRESHET_BENCH_SIGS")
  local file = io.open(path, "r")
  sigs = file:read("*a")
  file:close()
  sig_count = math.floor(#sigs / 65)
  local f = io.open(os.getenv("FRESHET_BENCH_TEMPLATE"), "r")
  template = f:read("*a")
  f:close()
  -- Several wrk processes (one per freshet instance) share the ids without overlap:
  -- each starts at its offset and steps by all threads of all processes.
  step = tonumber(os.getenv("FRESHET_BENCH_STRIDE") or os.getenv("FRESHET_BENCH_THREADS") or "1")
  counter = id + tonumber(os.getenv("FRESHET_BENCH_OFFSET") or "0")
end

function request()
  local i = (counter % sig_count)
  counter = counter + step
  local body = string.gsub(template, "EVENT_ID", string.format("wev_bench_%09d", i))
  return wrk.format("POST", "/webhooks/dbt", {["Authorization"] = string.sub(sigs, i * 65 + 1, i * 65 + 64), ["Content-Type"] = "application/json"}, body)
end
