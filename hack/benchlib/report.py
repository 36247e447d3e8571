"""Budget rows from the results JSON, and the markdown tables. Budgets are checked here, by reading output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

R = dict[str, Any]


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def _row(what: str, value: str, budget: str, ok: bool | None, reference: str, *, key: str) -> R:
    return {"key": key, "row": what, "value": value, "budget": budget, "ok": ok, "reference": reference}


def _claim_rows(r: R) -> list[R]:
    ph = r["claims"]["phases"]
    p, u = ph["sequential"]["prepare"], ph["sequential"]["unprepare"]
    b16, f8 = ph["batch16"]["prepare"]["claims_per_s"], ph["inflight8"]["prepare"]["claims_per_s"]
    return [
        _row(
            "prepare, 1 claim/call, sequential, p50 / p99 (incl. the claim GET)",
            f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} ms",
            "<= 2.0 / <= 6 ms",
            p["p50_ms"] <= 2.0 and p["p99_ms"] <= 6.0,
            "2.87 / 9.6 ms",
            key="prepare_sequential",
        ),
        _row("prepare, 16 claims/call", f"{b16:,.0f} claims/s", ">= 1,000 claims/s", b16 >= 1000,
             "414 claims/s", key="prepare_16_per_call"),
        _row("prepare, 8 calls in flight", f"{f8:,.0f} claims/s", ">= 650 claims/s", f8 >= 650,
             "325 claims/s", key="prepare_8_in_flight"),
        _row("unprepare, sequential, p50", f"{u['p50_ms']:.2f} ms", "<= 0.6 ms", u["p50_ms"] <= 0.6,
             "0.97 ms", key="unprepare_sequential"),
    ]  # fmt: skip


def _rss_rows(r: R) -> list[R]:
    rss = r["claims"]["rss"]
    ready, after = _mib(r["startup"]["rss_ready_kib"]["median"]), _mib(rss["after_calls"]["VmRSS"])
    return [
        _row(
            f"RSS at ready (dgx-h100) / after {r['claims']['calls']:,} calls (synthetic-256)",
            f"{ready} / {after} MiB (synthetic-256 at ready: "
            f"{_mib(rss['ready']['VmRSS'])}; peak {_mib(rss['after_calls']['VmHWM'])})",
            "<= 42 / <= 45 MiB",
            ready <= 42 and after <= 45,
            "42 / 49 MiB (1,232 calls)",
            key="rss",
        )
    ]


def _process_rows(r: R) -> list[R]:
    st, idle = r["startup"], r["claims"]["idle"]
    first, term = st["exec_to_first_slice_ms"], st["sigterm_exit_ms"]
    full_idle = idle["seconds"] >= 60
    return [
        _row(
            "exec -> first ResourceSlice accepted by the API (median / max)",
            f"{first['p50_ms'] / 1000:.3f} / {first['max_ms'] / 1000:.3f} s",
            "<= 0.5 s (median)",
            first["p50_ms"] <= 500,
            "1.035 s",
            key="exec_to_first_slice",
        ),
        _row(
            f"API requests in {idle['seconds']:g} s idle",
            str(idle["requests"]),
            "0 in 60 s",
            idle["requests"] == 0 if full_idle else None,
            "0",
            key="idle_requests",
        ),
        _row(
            "SIGTERM -> exit (median / max)",
            f"{term['p50_ms']:.1f} / {term['max_ms']:.1f} ms",
            "<= 25 ms (every run)",
            term["max_ms"] <= 25,
            "2-22 ms",
            key="sigterm_exit",
        ),
    ]


def _discovery_rows(r: R) -> list[R]:
    gpus, mig = r["discovery"]["gpus"], r["discovery"]["mig"]
    mig_value = f"{mig['p50_ms']:.1f} ms" if mig["measurable"] else f"not measurable ({mig['why']})"
    return [
        _row(
            f"discovery: {gpus['devices']} GPUs ({gpus['profile']}), p50",
            f"{gpus['p50_ms']:.1f} ms",
            "<= 50 ms",
            gpus["p50_ms"] <= 50,
            "-",
            key="discovery_gpus",
        ),
        _row(
            f"discovery: 8 GPUs fully MIG-partitioned ({mig['profile']}: "
            f"{mig.get('by_type', {}).get('mig', '?')} MIG devices), p50"
            if mig["measurable"]
            else "discovery: 8 GPUs fully MIG-partitioned, p50",
            mig_value,
            "<= 150 ms",
            mig["p50_ms"] <= 150 if mig["measurable"] else None,
            "-",
            key="discovery_mig",
        ),
    ]


def _dynamic_mig_rows(r: R) -> list[R]:
    """Informational (no budget yet): sequential prepare and unprepare of claims on dynamic MIG devices."""
    d = r.get("dynamic_mig")
    if not d:
        return []
    p, u = d["prepare"], d["unprepare"]
    pc, uc = p["cpu_ms_per_claim"], u["cpu_ms_per_claim"]
    return [
        _row(
            f"dynamic MIG {d['mig_profile']} on the mock ({d['profile']}, DRAPartitionableDevices on): "
            "prepare / unprepare, sequential, p50 / p99; plugin CPU per claim "
            "(informational; the mock omits NVML's creation time, ~1 s per GPU instance on hardware)",
            f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} ms; {u['p50_ms']:.2f} / {u['p99_ms']:.2f} ms; "
            f"CPU {pc.get('plugin', 0):.2f} / {uc.get('plugin', 0):.2f} ms ({d['claims']} claims)",
            "- (informational)",
            None,
            "-",
            key="dynamic_mig",
        )
    ]


_FLOORS = (
    ("do-nothing Python gRPC server, same client", ("grpc_noop",), "0.45 ms", "floor_grpc"),
    ("ResourceClaim GET, bare http.client + json", ("get_bare",), "0.99 ms", "floor_get"),
    ("ResourceClaim GET via gpudra.kube.client (lightkube)", ("get_client",), "-", "floor_get_client"),
    ("1 KiB write+fsync in the state dir", ("disk", "write_fsync_1k"), "0.21 ms", "floor_fsync"),
    (
        "1 KiB atomic replace (tmp, fsync, rename, fsync dir)",
        ("disk", "atomic_write_1k"),
        "-",
        "floor_atomic_write",
    ),
)


def _floor_rows(r: R) -> list[R]:
    rows = []
    for label, path, reference, key in _FLOORS:
        summary = r["floors"]
        for part in path:
            summary = summary[part]
        value = f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f} ms"
        rows.append(_row(f"floor: {label}, p50 / p99", value, "-", None, reference, key=key))
    return rows


SECTIONS: tuple[Callable[[R], list[R]], ...] = (
    _claim_rows,
    _rss_rows,
    _process_rows,
    _discovery_rows,
    _dynamic_mig_rows,
    _floor_rows,
)


def budget_rows(r: R) -> list[R]:
    return [row for section in SECTIONS for row in section(r)]


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**NO**")


def _cpu_table(r: R) -> list[str]:
    """CPU per claim by process. The plugin's share bounds its throughput: its Python work holds the GIL,
    so one call's CPU time at a time, whatever the number of cores."""
    lines = [
        "",
        "| phase | prepare CPU per claim: plugin / API / kubelet client | plugin-bound claims/s "
        "| unprepare CPU per claim: plugin / API / client |",
        "|---|---|---|---|",
    ]
    for name, ph in r["claims"]["phases"].items():
        p, u = ph["prepare"].get("cpu_ms_per_claim"), ph["unprepare"].get("cpu_ms_per_claim")
        if not p or not u:
            continue
        bound = f"{1000 / p['plugin']:,.0f}" if p.get("plugin") else "-"
        lines.append(
            f"| {name} | {p.get('plugin', 0):.2f} / {p.get('api', 0):.2f} / {p['client']:.2f} ms | {bound} "
            f"| {u.get('plugin', 0):.2f} / {u.get('api', 0):.2f} / {u['client']:.2f} ms |"
        )
    return lines


def _dynamic_mig_table(r: R) -> list[str]:
    d = r.get("dynamic_mig")
    if not d:
        return []
    lines = [
        "",
        f"Dynamic MIG ({d['profile']}, {d['gpus']} GPUs, {d['devices']} devices in slices {d['slices']}): "
        f"{d['rounds']} rounds of {d['claims_per_round']} {d['mig_profile']} claims on one GPU, "
        "1 claim/call, sequential; the mock creates MIG devices at once (real NVML: ~1 s per GPU instance).",
        "",
        "| side (N claims) | p50 / p90 / p99 / max per call | claims/s (sum of calls) "
        "| CPU per claim: plugin / API / kubelet client |",
        "|---|---|---|---|",
    ]
    for side in ("prepare", "unprepare"):
        x = d[side]
        c = x["cpu_ms_per_claim"]
        lines.append(
            f"| {side} ({x['claims']}) | {x['p50_ms']:.2f} / {x['p90_ms']:.2f} / {x['p99_ms']:.2f} / "
            f"{x['max_ms']:.2f} ms | {x['claims_per_s']:,.0f} "
            f"| {c.get('plugin', 0):.2f} / {c.get('api', 0):.2f} / {c.get('client', 0):.2f} ms |"
        )
    return lines


def markdown(r: R) -> str:
    lines = ["| measure | gpudra | budget | within | kubernetes-sigs example |", "|---|---|---|---|---|"]
    lines += [
        f"| {x['row']} | {x['value']} | {x['budget']} | {_mark(x['ok'])} | {x['reference']} |"
        for x in r["rows"]
    ]
    lines += [
        "",
        "| phase (N claims) | prepare p50 / p90 / p99 per call | prepare claims/s "
        "| unprepare p50 / p90 / p99 per call | unprepare claims/s |",
        "|---|---|---|---|---|",
    ]
    for name, ph in r["claims"]["phases"].items():
        p, u = ph["prepare"], ph["unprepare"]
        lines.append(
            f"| {name} ({ph['claims_per_call']}/call, {ph['calls_in_flight']} in flight, {p['claims']}) "
            f"| {p['p50_ms']:.2f} / {p['p90_ms']:.2f} / {p['p99_ms']:.2f} ms | {p['claims_per_s']:,.0f} "
            f"| {u['p50_ms']:.2f} / {u['p90_ms']:.2f} / {u['p99_ms']:.2f} ms | {u['claims_per_s']:,.0f} |"
        )
    lines += _cpu_table(r)
    lines += _dynamic_mig_table(r)
    v = r["validation"]
    lines += [
        "",
        f"Validation: {'passed' if v['passed'] else 'FAILED'} "
        f"({v['checks']:,} checks, {v['failed']} failed).",
    ]
    lines += [f"- {f}" for f in v["failures"]]
    return "\n".join(lines) + "\n"
