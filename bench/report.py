"""Turns bench/run.sh's results.txt into a Markdown table of medians and
ratios, followed by the exact command lines. Usage:
    report.py results.txt commands.txt
"""
import statistics
import sys

HUBS = ["livehub", "node-ws", "socketio"]

# scenario -> [(metric, label, better)]; better is "high" or "low".
METRICS = {
    "idle": [("rss_per_conn", "hub RSS per connection (bytes)", "low")],
    "broadcast": [
        ("deliv_per_cpu_s", "deliveries per hub CPU-second", "high"),
        ("deliv_per_s", "deliveries/s (publish start to all delivered)", "high"),
        ("p50_us", "publish→deliver p50 (µs)", "low"),
        ("p99_us", "publish→deliver p99 (µs)", "low"),
    ],
    "jobs": [
        ("pub_rate", "publishes/s achieved", "high"),
        ("p50_us", "publish→deliver p50 (µs)", "low"),
        ("p99_us", "publish→deliver p99 (µs)", "low"),
        ("p999_us", "publish→deliver p99.9 (µs)", "low"),
        ("deliv_per_cpu_s", "deliveries per hub CPU-second", "high"),
    ],
    "churn": [
        ("cycles_per_s", "connect+subscribe+close cycles/s", "high"),
        ("cycles_per_cpu_s", "cycles per hub CPU-second", "high"),
        ("p99_us", "cycle time p99 (µs)", "low"),
    ],
}


def parse(path):
    runs = []
    for line in open(path):
        parts = line.split()
        if len(parts) < 4 or parts[3] != "RESULT":
            continue
        kv = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
        kv["id"], kv["hub_name"], kv["rep"] = parts[0], parts[1], parts[2]
        if "cycles" in kv and float(kv.get("hub_cpu_s", 0) or 0) > 0:
            kv["cycles_per_cpu_s"] = str(float(kv["cycles"]) / float(kv["hub_cpu_s"]))
        runs.append(kv)
    return runs


def fmt(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def saturated(runs, ids):
    """Each hub's capacity on its core: the most deliveries per hub
    CPU-second among the 64 B broadcast rows that kept it >= 90 % busy
    (medians of OK runs). Below saturation a hub that keeps up delivers
    the offered rate whatever its efficiency, so only these rows compare
    what a core can do; each hub's row is named."""
    best = {}
    for rid in ids:
        for h in HUBS:
            hr = [r for r in runs if r["id"] == rid and r["hub_name"] == h and r.get("status") == "OK"
                  and r.get("scenario") == "broadcast" and r.get("payload") == "64"
                  and "deliv_per_cpu_s" in r and "hub_cpu_pct" in r]
            if not hr:
                continue
            cpu = statistics.median(float(r["hub_cpu_pct"]) for r in hr)
            v = statistics.median(float(r["deliv_per_cpu_s"]) for r in hr)
            if cpu >= 90 and v > best.get(h, (0, ""))[0]:
                best[h] = (v, rid)
    if not best:
        return
    print("\nSaturated broadcast (64 B): the most deliveries per hub CPU-second in a broadcast row "
          "that kept the hub at least 90 % busy, that is what one core delivers.\n")
    print("| hub | deliveries per CPU-second | row | livehub's advantage |")
    print("|---|---|---|---|")
    lh = best.get("livehub", (None,))[0]
    for h in HUBS:
        if h in best:
            adv = f"{lh / best[h][0]:.1f}×" if lh and h != "livehub" else "—"
            print(f"| {h} | {fmt(best[h][0])} | {best[h][1]} | {adv} |")


def main():
    runs = parse(sys.argv[1])
    ids = []
    for r in runs:
        if r["id"] not in ids:
            ids.append(r["id"])
    print("| run | metric | " + " | ".join(HUBS) + " | livehub vs node-ws | livehub vs socketio | runs OK |")
    print("|---|---|" + "---|" * len(HUBS) + "---|---|---|")
    for rid in ids:
        mine = [r for r in runs if r["id"] == rid]
        scen = next((r.get("scenario") for r in mine if r.get("scenario")), None)
        for metric, label, better in METRICS.get(scen, []):
            med = {}
            oks = []
            for h in HUBS:
                hr = [r for r in mine if r["hub_name"] == h]
                good = [float(r[metric]) for r in hr if r.get("status") == "OK" and metric in r]
                med[h] = statistics.median(good) if good else None
                if hr:
                    oks.append(f"{h} {sum(r.get('status') == 'OK' for r in hr)}/{len(hr)}")

            def ratio(peer):
                a, b = med.get("livehub"), med.get(peer)
                if not a or not b:
                    return "—"
                return f"{(a / b if better == 'high' else b / a):.1f}×"

            print(f"| {rid} | {label} | " + " | ".join(fmt(med[h]) for h in HUBS) +
                  f" | {ratio('node-ws')} | {ratio('socketio')} | {', '.join(oks)} |")
    print("\nRatios are livehub's advantage (>1× means livehub is better) on medians of OK runs.")
    saturated(runs, ids)
    print("\nCommands (hub ; load generator):\n")
    seen = set()
    for line in open(sys.argv[2]):
        rid, hub, cmd = line.rstrip("\n").split("\t", 2)
        if (rid, hub) in seen:
            continue
        seen.add((rid, hub))
        print(f"- {rid} / {hub}: `{cmd}`")


if __name__ == "__main__":
    main()
