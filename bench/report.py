"""
Turns the results of C{bench/run.py} into C{docs/BENCHMARKS.md}.

The measured part is generated; C{bench/notes.md} (what was optimised, what
the profile shows) is appended as written.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

PT16 = "treq pass-through, 16 conns"
PT64 = "treq pass-through, 64 conns"
ETS16 = "ETS verified, 16 conns"
ETS64 = "ETS verified, 64 conns"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if not r.get("failed")]


def _row(name: str, runs: list[dict[str, Any]]) -> str:
    good = _ok(runs)
    errors = sum(r["errors"] for r in runs)
    failed = len(runs) - len(good)
    if not good:
        return f"| {name} | failed | | | | | {errors} | {failed}/{len(runs)} |"
    cpu = [r["cpu_us_per_request"] for r in good if "cpu_us_per_request" in r]
    share = [r["cpu_share"] for r in good if "cpu_share" in r]
    return (f"| {name} | {_median([r['rps'] for r in good]):,.0f} | {_median([r['p50_ms'] for r in good]):.2f} | "
            f"{_median([r['p99_ms'] for r in good]):.2f} | "
            + (f"{_median(cpu):,.0f} | {100 * _median(share):.0f}% | " if cpu else "| | ")
            + f"{errors} | {failed}/{len(runs)} |")


_HEAD = ("| case | req/s | p50 ms | p99 ms | server CPU µs/req | server CPU use | errors | failed runs |\n"
         "|---|---:|---:|---:|---:|---:|---:|---:|")


def _ratios(runs: dict[str, list[dict[str, Any]]], top: str, bottom: str, cpu: bool = False) -> list[float]:
    """
    Per repetition: top / bottom, from runs of the same repetition; of req/s,
    or (C{cpu}) of requests per CPU-second of the server process.
    """
    out = []
    for a, b in zip(runs.get(top, []), runs.get(bottom, [])):
        if a.get("failed") or b.get("failed"):
            continue
        if cpu:
            if a.get("cpu_us_per_request") and b.get("cpu_us_per_request"):
                out.append(b["cpu_us_per_request"] / a["cpu_us_per_request"])
        elif b["rps"]:
            out.append(a["rps"] / b["rps"])
    return out


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def _summary(results: dict[str, Any]) -> dict[str, str]:
    """The figures compared before and after the optimisation work."""
    out: dict[str, str] = {}
    relay = results.get("relay", {}).get("runs", {})
    for case in (ETS16, ETS64):
        good = _ok(relay.get(case, []))
        if good:
            out[f"{case}: req/s (server CPU µs/req)"] = (
                f"{_median([r['rps'] for r in good]):,.0f} "
                f"({_median([r.get('cpu_us_per_request', float('nan')) for r in good]):,.0f})")
    for label, top, bottom in ((f"{ETS16} / {PT16}", ETS16, PT16), (f"{ETS64} / {PT64}", ETS64, PT64)):
        ratios = _ratios(relay, top, bottom)
        if ratios:
            out[label] = f"{_median(ratios):.2f}×"
    million = "ETS verified, 1,000,000 live replay entries, 64 conns"
    ratios = _ratios(relay, million, ETS64)
    if ratios:
        out["1 M live replay entries / none"] = f"{_median(ratios):.2f}×"
    issue = _ok(results.get("issue", {}).get("runs", []))
    if issue:
        out["issuance: tokens/s (server CPU µs/token)"] = (
            f"{_median([r['rps'] for r in issue]):,.0f} "
            f"({_median([r.get('cpu_us_per_request', float('nan')) for r in issue]):,.0f})")
    sse = results.get("sse")
    if sse:
        out["SSE: added p99"] = f"{_median([e['p99_ms'] - d['p99_ms'] for e, d in zip(sse['ets'], sse['direct'])]):.2f} ms"
    memory = results.get("memory")
    if memory:
        for kind, label in (("replay", "replay entry"), ("limiter", "rate-limit key")):
            out[f"bytes per live {label} (RSS)"] = f"{memory['bytes_per_key'][kind]['rss']:.0f}"
    return out


def _before_after(results: dict[str, Any]) -> list[str]:
    path = os.path.join(HERE, "results-before.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        before_results = json.load(f)
    before, after = _summary(before_results), _summary(results)
    lines = ["## Before and after the optimisation work\n",
             before_results.get("note", "") + " After: this run.\n",
             "| figure (medians) | before | after |", "|---|---:|---:|"]
    for name in before:
        lines.append(f"| {name} | {before[name]} | {after.get(name, '—')} |")
    lines.append(f"\nInterpreters: before, Python {before_results['versions']['python']}; "
                 f"after, {results['versions']['python']}.")
    compare = _ok(results.get("issue_compare", {}).get("runs", []))
    if compare:
        lines.append(
            f"The after build's issuance on {results['issue_compare']['python']}: "
            f"{_median([r['rps'] for r in compare]):,.0f} tokens/s "
            f"({_median([r['cpu_us_per_request'] for r in compare]):,.0f} µs/token).")
    lines.append("\nAbsolute figures of two runs move with the load of the shared machine; "
                 "the ratios are the comparable ones.\n")
    return lines


def render(results: dict[str, Any]) -> str:
    v = results["versions"]
    seconds, repeat = results["seconds"], results["repeat"]
    out: list[str] = []
    w = out.append
    w("# ETS benchmarks\n")
    w("Generated by `make bench` (`bench/run.py`); do not edit by hand except "
      "`bench/notes.md`, which is appended at the end.\n")
    w("## How it was run\n")
    w("```sh")
    w(f"make bench        # = BENCH_SECONDS={seconds:g} BENCH_REPEAT={repeat} .venv-bench/bin/python bench/run.py")
    w("```\n")
    w(f"- Each load case: `wrk -t2 -cN -d{seconds:g}s --timeout 5s`, {repeat} repetitions, "
      "medians reported. Within one repetition the cases run back to back, so each "
      "ratio is computed per repetition (same minute, same machine state) and the "
      "median of those ratios is reported.")
    w("- ETS and the pass-through baseline are pinned to core 0 (`taskset -c 0`); "
      "wrk, the nginx upstream and the streaming upstream to core 1. All on 127.0.0.1.")
    w("- ETS is the installed package run by `twistd -n -y bench/ets_prefilled.tac`, "
      "which is `twistd ets`'s own wiring (`ets_twisted.app.build_service`, configured "
      "from the environment) with the memory store's replay cache pre-filled before it "
      "listens. Its access log (one line per request) goes to a file, as in production. "
      "`UPSTREAM_SERVICE_SECRET` is set (the key is injected into every relayed query); "
      "rate limits are set to 1,000,000/min with a burst of 1,000,000 so they never refuse.")
    w("- Each ETS request carries a fresh access token (minted by a real `POST /tvm/issue` "
      "right before the run), `Origin`, a 19-byte JSON body, and the next unused proof "
      "from a file of pre-signed ES256 proofs (`bench/proofgen.py`, `cryptography` only; "
      "unique `jti`, `htm`, `htu`, `ath`, and `iat` = the moment the file was made, right "
      "before the run: well inside the default `DPOP_MAX_AGE_SECONDS` of 300). Each wrk "
      "thread reads its own file (`bench/proofs.lua`); a thread that runs out sends no "
      "proof, which ETS refuses, so the run would count as failed.")
    w("- The direct and pass-through cases send the same bytes (one proof, reused: "
      "nothing checks it there). The pass-through (`bench/passthrough.tac`) is the "
      "minimal proxy written the plain treq way: `treq.request()` with treq's defaults "
      "and `treq.collect()` into the answer, no checks, the same twisted.web server; its "
      "access lines go through twistd's own text log observer, ETS's through its own "
      "batched writer (`ets_twisted/logs.py`, what `twistd -n ets` installs).")
    w("- The interpreter: `make bench` runs everything in `.venv-bench`, made from "
      "`BENCH_PYTHON` (default: Debian's `/usr/bin/python3.11` when present, a production "
      "build of CPython; else `python3`). The issuance case is also run with the "
      "development venv's interpreter (`.venv`, whatever `python3` is) for comparison.")
    w("- A run with any non-2xx answer or socket error is reported as failed, not as throughput.")
    w("- The machine is shared: other work may run on it while the benchmark runs, "
      "which is why ratios within a repetition matter more than absolute figures.\n")
    w("## Machine\n")
    w("```")
    w(v["lscpu"])
    w(f"kernel {v['kernel']}")
    w(f"{v['python']}, Twisted {v['twisted']}, treq {v['treq']}, cryptography {v['cryptography']}")
    w(f"{v['nginx']}")
    w(f"{v['wrk']}")
    w("```\n")
    w(f"Whole benchmark: {results.get('elapsed_s', 0):.0f} s.\n")

    targets: list[tuple[str, str, bool | None]] = []
    relay = results.get("relay")
    if relay:
        runs = relay["runs"]
        w("## Relay throughput (POST, small JSON both ways)\n")
        w(_HEAD)
        for name, case_runs in runs.items():
            w(_row(name, case_runs))
        w("")
        w("\"Server CPU\" is the CPU time the gateway process (nginx for the direct case) "
          "used during the run divided by the requests it served, and its share of the "
          "run's wall time: when it is well under 100%, something else took core 0 away "
          "and the req/s figure understates the gateway.\n")
        w("### Ratios (per repetition, then the median)\n")
        w("Throughput ratio: req/s over req/s of the same repetition. CPU-normalised ratio: "
          "requests per CPU-second over the same (what each would do with a whole core to "
          "itself), which is steadier when the machine is shared. The target is judged on "
          "the throughput ratio.\n")
        w("| ratio | throughput, per repetition | throughput, median | CPU-normalised, median | target |")
        w("|---|---|---:|---:|---|")
        pairs = [(f"{ETS16} / {PT16}", ETS16, PT16, 1.2), (f"{ETS64} / {PT64}", ETS64, PT64, 1.2)]
        for name in runs:
            if "live replay entries" in name:
                pairs.append((f"{name} / {ETS64}", name, ETS64, 0.9))
        for label, top, bottom, target in pairs:
            ratios = _ratios(runs, top, bottom)
            median = _median(ratios)
            cpu_median = _median(_ratios(runs, top, bottom, cpu=True))
            w(f"| {label} | {', '.join(f'{r:.2f}' for r in ratios)} | {median:.2f} | {cpu_median:.2f} | ≥ {target} |")
            targets.append((f"{label} ≥ {target}", f"{median:.2f}× (CPU-normalised {cpu_median:.2f}×)",
                            bool(ratios) and median >= target))
        w("")
        rss = relay.get("rss_kib", {})
        if rss:
            w("Resident memory of each ETS process after its runs: " + ", ".join(
                f"{int(n):,} prefilled: {kib / 1024:.0f} MiB" for n, kib in sorted(rss.items(), key=lambda i: int(i[0]))) + ".\n")
    issue = results.get("issue")
    if issue:
        w("## Issuance (`POST /tvm/issue`, 64 connections)\n")
        w(_HEAD.replace("req/s", "tokens/s"))
        w(_row(f"POST /tvm/issue, {issue.get('python', v['python'])}", issue["runs"]))
        compare = results.get("issue_compare")
        if compare:
            w(_row(f"POST /tvm/issue, {compare['python']}", compare["runs"]))
            ratios = [a["cpu_us_per_request"] / b["cpu_us_per_request"]
                      for a, b in zip(compare["runs"], issue["runs"]) if not (a["failed"] or b["failed"])]
            if ratios:
                w(f"\nServer CPU per token, the second interpreter's over the first's, per repetition "
                  f"(the two daemons take turns, a few seconds apart): "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; median {_median(ratios):.2f}.")
        w("")
        good = _ok(issue["runs"])
        rate = _median([r["rps"] for r in good])
        cpu = [r["cpu_us_per_request"] for r in good if "cpu_us_per_request" in r]
        per_core = f" ({1e6 / _median(cpu):,.0f}/s per CPU-second)" if cpu else ""
        targets.append(("issuance ≥ 8,000 tokens/s", f"{rate:,.0f}/s{per_core}", bool(good) and rate >= 8000))
    memory = results.get("memory")
    if memory:
        w(f"## Memory per live entry ({memory['n']:,} live keys, `bench/memory_per_entry.py`)\n")
        w("| store | bytes/key (tracemalloc) | bytes/key (RSS growth) | target |")
        w("|---|---:|---:|---|")
        for kind, label in (("replay", "replay cache entry"), ("limiter", "rate-limit key")):
            f = memory["bytes_per_key"][kind]
            w(f"| {label} | {f['tracemalloc']:.1f} | {f['rss']:.1f} | ≤ 150 |")
            worst = max(f["tracemalloc"], f["rss"])
            targets.append((f"memory per {label} ≤ 150 B", f"{worst:.0f} B", worst <= 150))
        w("")
    sse = results.get("sse")
    if sse:
        w("## Server-sent events: latency of one event (200 events, 10 ms apart, per repetition)\n")
        w("Measured from the upstream's write (its `time.monotonic_ns()` in the event) to "
          "the client's read, on one machine; client and upstream on core 1, ETS on core 0, idle otherwise.\n")
        w("| path | p50 ms | p99 ms | max ms |")
        w("|---|---:|---:|---:|")
        for via, label in (("direct", "direct to the upstream"), ("ets", "through ETS")):
            w(f"| {label} | {_median([r['p50_ms'] for r in sse[via]]):.3f} | "
              f"{_median([r['p99_ms'] for r in sse[via]]):.3f} | {_median([r['max_ms'] for r in sse[via]]):.3f} |")
        added = [e["p99_ms"] - d["p99_ms"] for e, d in zip(sse["ets"], sse["direct"])]
        added50 = [e["p50_ms"] - d["p50_ms"] for e, d in zip(sse["ets"], sse["direct"])]
        w(f"\nAdded by ETS: p50 {_median(added50):.3f} ms, p99 {_median(added):.3f} ms "
          f"(per repetition: {', '.join(f'{a:.3f}' for a in added)}).\n")
        targets.append(("SSE added p99 ≤ 5 ms", f"{_median(added):.2f} ms", _median(added) <= 5))
    big = results.get("big")
    if big:
        w("## Relaying a 1 GiB answer\n")
        w("| run | status | bytes | seconds | MiB/s | RSS before MiB | RSS peak MiB | growth MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(big["runs"], 1):
            w(f"| {i} | {r['status']} | {r['bytes']:,} | {r['seconds']:.1f} | "
              f"{r['bytes'] / 1048576 / r['seconds']:.0f} | {r['rss_before_mib']:.1f} | "
              f"{r['rss_peak_mib']:.1f} | {r['growth_mib']:.1f} |")
        growth = max(r["growth_mib"] for r in big["runs"])
        ok = all(not r["failed"] for r in big["runs"]) and growth <= 32
        w(f"\nLargest growth: {growth:.1f} MiB.\n")
        targets.append(("1 GiB relay RSS growth ≤ 32 MB", f"{growth:.1f} MiB (largest of {len(big['runs'])})", ok))
    scale = results.get("scale")
    scale_line = "| scale-out: `WORKERS=2` with Redis next to one worker | not measured | **not done** |"
    if scale:
        w("## Scale-out: `WORKERS=2` on a Redis store\n")
        if "error" in scale:
            w(f"Not measured: {scale['error'].splitlines()[0]}\n")
        else:
            w("Nothing is pinned in this case: two workers need both cores, and wrk, nginx "
              "and Redis run on the same two cores, so this shows what a second worker buys "
              "on a machine that is also the load generator, not what it buys on a core of "
              "its own.\n")
            w(_HEAD)
            for name, case_runs in scale["runs"].items():
                w(_row(name, case_runs))
            names = list(scale["runs"])
            ratios = _ratios(scale["runs"], names[1], names[0]) if len(names) == 2 else []
            w(f"\nWORKERS=2 / WORKERS=1 per repetition: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {_median(ratios):.2f}.\n")
            scale_line = (f"| scale-out: `WORKERS=2` with Redis next to one worker (reported, no target) | "
                          f"{_median(ratios):.2f}× | — |")
    w("## Targets\n")
    w("| target | measured (median) | |")
    w("|---|---:|---|")
    for name, measured, ok in targets:
        w(f"| {name} | {measured} | {_verdict(ok)} |")
    w(scale_line)
    w("")
    out.extend(_before_after(results))
    notes = os.path.join(HERE, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            w(f.read())
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    with open(sys.argv[1]) as f:
        print(render(json.load(f)))
