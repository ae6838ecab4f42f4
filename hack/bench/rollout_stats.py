#!/usr/bin/env python3
"""Figures for hack/bench/rollout (standard library only).

  record OUT -- CMD...     run CMD (a pod watch printing the API server's JSON events, one per
                           line), write one compact line per event to OUT with the time it was
                           received; stops on SIGTERM/SIGINT or when CMD ends
  count FILE               lines in FILE (0 when missing)
  interruption EVENTS OLD NEW
                           per node: old pod (image OLD) deleted -> new pod (image NEW) Ready;
                           prints JSON figures
  prom FILE NAME           sum of a Prometheus text metric's samples (all label sets)
  prom-verbs FILE NAME     JSON {verb: value} of a counter with a `verb` label
  histogram BEFORE AFTER NAME
                           JSON {count, mean, p50, p99} of a histogram's increase between two
                           scrapes (quantiles interpolated within buckets, as histogram_quantile)
  table RESULTS_ON RESULTS_OFF
                           the comparison table and the targets of ARCHITECTURE.md section 6
"""

import json
import math
import re
import signal
import subprocess
import sys
import time
from datetime import datetime


def parse_time(value):
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------ record


def record(out_path, cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)

    def stop(_signum, _frame):
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out_path, "w", encoding="utf-8") as out:
        for raw in proc.stdout:
            received = time.time()
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            obj = event.get("object") or {}
            if obj.get("kind") != "Pod":
                continue
            meta = obj.get("metadata") or {}
            spec = obj.get("spec") or {}
            status = obj.get("status") or {}
            ready = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                {},
            )
            containers = spec.get("containers") or [{}]
            line = {
                "t": round(received, 3),
                "type": event.get("type"),
                "uid": meta.get("uid"),
                "name": meta.get("name"),
                "node": spec.get("nodeName"),
                "image": containers[0].get("image"),
                "prepull": (meta.get("labels") or {}).get("edgefleet.io/prepull") == "true",
                "deletion": meta.get("deletionTimestamp"),
                "grace": meta.get("deletionGracePeriodSeconds"),
                "ready": ready.get("status") == "True",
                "ready_since": ready.get("lastTransitionTime"),
                "sim_pull": (meta.get("annotations") or {}).get("edgefleet.io/sim-pull-seconds"),
            }
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            out.flush()
    proc.wait()


def count(path):
    try:
        with open(path, encoding="utf-8") as f:
            print(sum(1 for _ in f))
    except FileNotFoundError:
        print(0)


# ------------------------------------------------------------------ interruption


def percentile(values, p):
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def interruption(events_path, old_image, new_image):
    # Per pod uid: what the watch saw first.
    pods = {}
    with open(events_path, encoding="utf-8") as f:
        for raw in f:
            e = json.loads(raw)
            if e["prepull"] or not e["node"]:
                continue
            p = pods.setdefault(
                e["uid"],
                {"node": e["node"], "image": e["image"], "deleted_seen": None,
                 "deleted_api": None, "gone_seen": None, "bound_seen": e["t"],
                 "ready_seen": None, "ready_api": None, "sim_pull": None},
            )
            p["node"] = e["node"]
            if e["type"] == "DELETED":
                p["gone_seen"] = e["t"]
            if e["sim_pull"] is not None:
                p["sim_pull"] = e["sim_pull"]
            gone = e["deletion"] is not None or e["type"] == "DELETED"
            if gone and p["deleted_seen"] is None:
                p["deleted_seen"] = e["t"]
                if e["deletion"] is not None:
                    # deletionTimestamp is the deadline: request time + grace period.
                    p["deleted_api"] = parse_time(e["deletion"]) - (e["grace"] or 0)
            if e["ready"] and not gone and p["ready_seen"] is None:
                p["ready_seen"] = e["t"]
                p["ready_api"] = parse_time(e["ready_since"])

    old = {}
    new = {}
    for p in pods.values():
        if p["image"] == old_image and p["deleted_seen"] is not None:
            old.setdefault(p["node"], p)
        elif p["image"] == new_image and p["ready_seen"] is not None:
            new.setdefault(p["node"], p)
    seen, api, windows = [], [], []
    # Where the time goes: old pod deleted -> gone (the kubelet stops it), gone -> new pod
    # bound to the node (DaemonSet controller, scheduler), bound -> Ready (pull or cache).
    stop, replace, start = [], [], []
    for node, o in old.items():
        n = new.get(node)
        if n is None:
            continue
        seen.append(n["ready_seen"] - o["deleted_seen"])
        windows.append((o["deleted_seen"], n["ready_seen"]))
        if o["deleted_api"] is not None and n["ready_api"] is not None:
            api.append(n["ready_api"] - o["deleted_api"])
        if o["gone_seen"] is not None:
            stop.append(o["gone_seen"] - o["deleted_seen"])
            replace.append(n["bound_seen"] - o["gone_seen"])
            start.append(n["ready_seen"] - n["bound_seen"])
    # The most nodes interrupted at the same time (a batch's swaps overlap by design).
    edges = sorted([(a, 1) for a, _ in windows] + [(b, -1) for _, b in windows])
    down = peak = 0
    for _, step in edges:
        down += step
        peak = max(peak, down)
    figures = {
        "nodes_measured": len(seen),
        "nodes_old_deleted": len(old),
        "nodes_new_ready": len(new),
        "new_from_cache": sum(1 for n in new.values() if n["sim_pull"] == "0"),
        "peak_interrupted": peak,
    }
    for name, values in (("seen", seen), ("api", api), ("stop", stop), ("replace", replace),
                         ("start", start)):
        for p in (50, 99, 100):
            v = percentile(values, p)
            figures[f"{name}_p{p}"] = None if v is None else round(v, 2)
    print(json.dumps(figures))


# ------------------------------------------------------------------ prometheus

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(path, name):
    """(labels dict, value) of every sample of metric `name` in a text exposition."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = SAMPLE.match(line)
                if m and m.group(1) == name:
                    labels = dict(LABEL.findall(m.group(3) or ""))
                    out.append((labels, float(m.group(4))))
    except FileNotFoundError:
        pass
    return out


def prom(path, name):
    print(int(sum(v for _, v in samples(path, name))))


def prom_verbs(path, name):
    verbs = {}
    for labels, v in samples(path, name):
        verb = labels.get("verb", "")
        verbs[verb] = verbs.get(verb, 0) + int(v)
    print(json.dumps(verbs, sort_keys=True))


def histogram(before, after, name):
    def buckets(path):
        out = {}
        for labels, v in samples(path, name + "_bucket"):
            le = labels.get("le")
            out[math.inf if le == "+Inf" else float(le)] = v
        return out

    def total(path, suffix):
        return sum(v for _, v in samples(path, name + suffix))

    b0, b1 = buckets(before), buckets(after)
    delta = sorted((le, b1[le] - b0.get(le, 0)) for le in b1)
    n = total(after, "_count") - total(before, "_count")
    s = total(after, "_sum") - total(before, "_sum")
    result = {"count": int(n), "mean": round(s / n, 2) if n else None}
    for q in (50, 99):
        result[f"p{q}"] = None
        if n <= 0:
            continue
        rank = q / 100 * n
        lower, below = 0.0, 0.0
        for le, cumulative in delta:
            if cumulative >= rank:
                if math.isinf(le):
                    result[f"p{q}"] = lower  # as histogram_quantile: the highest finite bound
                else:
                    inside = cumulative - below
                    frac = (rank - below) / inside if inside else 1.0
                    result[f"p{q}"] = round(lower + (le - lower) * frac, 2)
                break
            lower, below = le, cumulative
    print(json.dumps(result))


# ------------------------------------------------------------------ table


def table(on_path, off_path):
    with open(on_path, encoding="utf-8") as f:
        on = json.load(f)
    with open(off_path, encoding="utf-8") as f:
        off = json.load(f)

    def fmt(v, unit=""):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.2f}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"
        return f"{v}{unit}"

    def ratio(a, b):
        if a in (None, 0) or b is None:
            return "-"
        return f"{b / a:.1f}x"

    rows = [
        ("targets (nodes)", "targets", "", False),
        ("batch size", "batch_size", "", False),
        ("batches planned", "batches", "", False),
        ("batches, RolloutJob status.totalBatches", "status_batches", "", False),
        ("total time, apply -> Completed", "total_seconds", " s", True),
        ("interruption p50", "interruption_p50", " s", True),
        ("interruption p99", "interruption_p99", " s", True),
        ("interruption max", "interruption_max", " s", True),
        ("interruption p99, API timestamps (1 s res.)", "interruption_api_p99", " s", True),
        ("interruption p99, operator histogram", "operator_interruption_p99", " s", True),
        ("interruptions the operator observed", "operator_interruption_count", "", False),
        ("  p50 old pod deleted -> gone", "stop_p50", " s", False),
        ("  p50 gone -> new pod bound", "replace_p50", " s", False),
        ("  p50 new pod bound -> Ready", "start_p50", " s", False),
        ("most nodes interrupted at once", "peak_interrupted", "", False),
        ("pre-pull duration mean, operator", "operator_prepull_mean", " s", False),
        ("new pods started from the node's cache", "new_from_cache", "", False),
        ("API requests per target", "api_requests_per_target", "", True),
        ("operator RSS, caches synced (before the job)", "operator_synced_rss_mib", " MiB", False),
        ("operator peak RSS (VmHWM)", "operator_peak_rss_mib", " MiB", True),
        ("operator RSS when the job completed", "operator_end_rss_mib", " MiB", False),
    ]
    head = ("metric", "pre-pull on", "pre-pull off", "off / on")
    lines = [head]
    for label, key, unit, with_ratio in rows:
        a, b = on.get(key), off.get(key)
        lines.append((label, fmt(a, unit), fmt(b, unit), ratio(a, b) if with_ratio else ""))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    sep = "-+-".join("-" * w for w in widths)
    for i, r in enumerate(lines):
        print(" | ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            print(sep)
    print()
    print(f"API requests by verb, pre-pull on:  {on.get('api_requests_by_verb')}")
    print(f"API requests by verb, pre-pull off: {off.get('api_requests_by_verb')}")
    print()

    p99_on, p99_off = on.get("interruption_p99"), off.get("interruption_p99")
    rss = max(v for v in (on.get("operator_peak_rss_mib"), off.get("operator_peak_rss_mib"), 0) if v)
    checks = [
        (f"interruption p99 with pre-pull <= 10 s ({fmt(p99_on, ' s')})",
         p99_on is not None and p99_on <= 10),
        (f"p99 without pre-pull >= 3x p99 with ({ratio(p99_on, p99_off)})",
         p99_on not in (None, 0) and p99_off is not None and p99_off >= 3 * p99_on),
        (f"operator peak RSS < 100 MiB at {on.get('targets')} nodes ({fmt(rss, ' MiB')})",
         0 < rss < 100),
        (f"every target measured (on {on.get('measured')}/{on.get('targets')}, "
         f"off {off.get('measured')}/{off.get('targets')})",
         on.get("measured") == on.get("targets") and off.get("measured") == off.get("targets")),
    ]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "record" and len(args) >= 3 and args[1] == "--":
        record(args[0], args[2:])
    elif cmd == "count" and len(args) == 1:
        count(args[0])
    elif cmd == "interruption" and len(args) == 3:
        interruption(*args)
    elif cmd == "prom" and len(args) == 2:
        prom(*args)
    elif cmd == "prom-verbs" and len(args) == 2:
        prom_verbs(*args)
    elif cmd == "histogram" and len(args) == 3:
        histogram(*args)
    elif cmd == "table" and len(args) == 2:
        table(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
