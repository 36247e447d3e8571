"""Dynamic MIG: prepare + unprepare of claims allocated to ``1g.10gb`` placements that gpudra creates.

A run of its own: a second stand-in API server with ``DRAPartitionableDevices`` on (as Kubernetes 1.36
has it by default), and ``gpudra run`` on ``dgx-h100`` with its default ``--mig-management dynamic``, so every
H100 is published whole plus every MIG placement, with its counter set in a slice of its own. Each round
allocates every ``1g.10gb`` placement of one GPU (7 on an H100, all held at once: the counters allow exactly
that), prepares them one call at a time, then unprepares them in the same order; round ``r`` uses GPU
``r mod 8``. Preparing creates the GPU instance and its compute instance in the mock's fake NVML, unprepare
destroys them. The first prepare on each GPU also switches its MIG mode on, and the GPUs stay in MIG mode
(the claim that switched it is unprepared while others still hold MIG devices there). An unmeasured warm-up
round comes first.

Each answer is checked: exactly the allocated device; CDI ids defined by the claim's spec file; the fake
NVML (its state file, which the mock keeps beside the run dir as real MIG instances outlive the process)
holds exactly one GPU instance at the allocated profile and placement, with one compute instance, and the
claim's CDI spec names that MIG device's UUID; after unprepare no CDI spec, no description file and no
MIG instance is left, and during the rounds the plugin wrote no ResourceSlice (creating or destroying MIG
devices does not change what is published).

The mock creates MIG devices at once; real NVML takes on the order of a second per GPU instance, which
these numbers leave out. No budget applies yet: the row is informational.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchlib import claims as bc
from benchlib.discovery import mig_maxima
from benchlib.phases import Kubelet, cpu_seconds
from benchlib.procs import SLICES, BenchError, Http, PluginProc, StandIn, has_devices
from benchlib.runs import settled_pool, start_until_ready, tmpfs_dir
from benchlib.stats import latency_ms, throughput
from gpudra.devtools import kubeletsim
from gpudra.model import names

GATE: Final = "DRAPartitionableDevices"
#: What the stand-in's /version says: the first release with the gate on by default.
KUBE_VERSION: Final = "1.36.0"
PROFILE: Final = "dgx-h100"
MIG_PROFILE: Final = "1g.10gb"
#: Where the mock keeps its fake NVML's MIG state: beside the description files, in the run dir
#: (gpudra.vendors.mock.driver.MIG_STATE_FILE).
MIG_STATE_FILE: Final = "mock-mig-state.json"
#: A slice with devices that consume counters holds at most this many (Kubernetes 1.35+).
MAX_COUNTER_DEVICES: Final = 64


@dataclass(frozen=True, slots=True)
class Placement:
    """A published dynamic MIG device: name, parent GPU, GPU-instance profile id, first memory slice."""

    device: str
    parent: str  # "GPU-..."
    profile_id: int
    start: int


@dataclass
class Pool:
    """What the node published: the MIG placements of ``MIG_PROFILE`` per parent GPU, the counter sets and
    every device's consumption (for the bench's own fit check, as the scheduler would do)."""

    devices: int = 0
    slice_sizes: list[int] = field(default_factory=list)
    counter_sets: dict[str, dict[str, int]] = field(default_factory=dict)
    consumes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    placements: dict[str, list[Placement]] = field(default_factory=dict)


def _attr(device: Mapping[str, Any], name: str) -> Any:
    value = (device.get("attributes") or {}).get(name) or {}
    return next(iter(value.values()), None) if isinstance(value, dict) else None


def _quantities(counters: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(str(v.get("value", "0"))) for k, v in counters.items()}


def check_pool(api: Http, node: str, v: bc.Validation, want_per_gpu: Mapping[str, int]) -> Pool:
    """The partitionable pool as published with the gate on: counter sets in slices without devices, device
    slices of <= 64 devices, every consumption naming a published counter set, one whole GPU per counter set,
    no ``uuid`` on a MIG device that does not exist yet, and as many ``MIG_PROFILE`` placements per GPU as
    its profile table allows at once (``want_per_gpu``, by GPU UUID)."""
    slices = settled_pool(api, node, timeout_s=30)
    pool = Pool(slice_sizes=[len(sl["spec"].get("devices") or []) for sl in slices])
    for sl in slices:
        spec = sl["spec"]
        shared = spec.get("sharedCounters") or []
        v.expect(
            not (shared and has_devices(sl)), f"slice {sl['metadata']['name']} mixes counters and devices"
        )
        for cs in shared:
            pool.counter_sets[cs["name"]] = _quantities(cs.get("counters") or {})
        devices = spec.get("devices") or []
        if any(d.get("consumesCounters") for d in devices):
            v.expect(
                len(devices) <= MAX_COUNTER_DEVICES, f"slice {sl['metadata']['name']}: {len(devices)} devices"
            )
        for d in devices:
            pool.devices += 1
            pool.consumes[d["name"]] = {
                c["counterSet"]: _quantities(c.get("counters") or {}) for c in d.get("consumesCounters") or []
            }
            if _attr(d, "type") == "mig" and _attr(d, "profile") == MIG_PROFILE and d.get("consumesCounters"):
                v.expect(_attr(d, "uuid") is None, f"dynamic MIG device {d['name']} has a uuid attribute")
                profile_id, start = d["name"].rsplit("-", 2)[1:]
                parent = str(_attr(d, "parentUUID"))
                pool.placements.setdefault(parent, []).append(
                    Placement(d["name"], parent, int(profile_id), int(start))
                )
    v.expect(bool(pool.counter_sets), f"{node}: no counter set published (the gate is on)")
    unknown = {cs for c in pool.consumes.values() for cs in c} - set(pool.counter_sets)
    v.expect(not unknown, f"{node}: devices consume unpublished counter sets {sorted(unknown)[:3]}")
    for cs, counters in pool.counter_sets.items():
        whole = [n for n, c in pool.consumes.items() if c.get(cs) == counters]
        v.expect(whole == [cs], f"counter set {cs}: devices consuming all of it: {whole[:3]}")
    for parent, want in want_per_gpu.items():
        got = len(pool.placements.get(parent, []))
        v.expect(got == want, f"GPU {parent}: {got} {MIG_PROFILE} placements published, want {want}")
    for places in pool.placements.values():
        places.sort(key=lambda p: p.start)
    return pool


def _fits(pool: Pool, devices: Sequence[str]) -> bool:
    """Whether ``devices`` can be allocated together: their consumption fits every counter set."""
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name in devices:
        for cs, counters in pool.consumes[name].items():
            for counter, value in counters.items():
                used[cs][counter] += value
    return all(
        value <= pool.counter_sets[cs].get(counter, 0)
        for cs, c in used.items()
        for counter, value in c.items()
    )


def _mig_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MIG_STATE_FILE
    return dict(json.loads(path.read_text())) if path.exists() else {"gpus": {}}


def _instances(state: Mapping[str, Any]) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """GPU UUID -> (GPU instances created, compute instances created) in the fake NVML."""
    return {
        gpu: (list(entry.get("gpu_instances") or []), list(entry.get("compute_instances") or []))
        for gpu, entry in (state.get("gpus") or {}).items()
    }


@dataclass
class _Cpu:
    """CPU milliseconds spent by the plugin, the API stand-in and this process (the kubelet's side), summed
    over the measured spans only (claim creation between the rounds is left out)."""

    pids: Mapping[str, int]
    ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _at: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._at = {name: cpu_seconds(pid) for name, pid in self.pids.items()} | {"client": self._own()}

    def stop(self) -> None:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()} | {"client": self._own()}
        for name, t in now.items():
            self.ms[name] += (t - self._at[name]) * 1000

    def per_claim(self, claims: int) -> dict[str, float]:
        return {k: round(v / claims, 3) for k, v in self.ms.items()}


@dataclass
class _Rounds:
    kubelet: Kubelet
    api: Http
    plugin: PluginProc
    pool: Pool
    v: bc.Validation
    prep_cpu: _Cpu
    unprep_cpu: _Cpu
    prepare_s: list[float] = field(default_factory=list)
    unprepare_s: list[float] = field(default_factory=list)

    def round(self, name: str, places: Sequence[Placement], *, measured: bool) -> None:
        node, cdi_root, v = self.plugin.node, self.plugin.cdi_root, self.v
        v.expect(_fits(self.pool, [p.device for p in places]), f"{name}: the allocation overcommits counters")
        claims = [
            bc.allocate(self.api, f"{name}-{p.start}", node, p.device, device_class=names.CLASS_MIG)
            for p in places
        ]
        answers: dict[str, Any] = {}
        self.prep_cpu.start()
        for c in claims:
            got, took = self.kubelet.prepare([c])
            answers.update(got)
            if measured:
                self.prepare_s.append(took)
        self.prep_cpu.stop()
        bc.check_prepared(v, answers, claims, node)
        bc.check_specs(v, answers, claims, cdi_root)
        self._check_created(name, places, claims, answers)
        u_answers: dict[str, Any] = {}
        self.unprep_cpu.start()
        for c in claims:
            got, took = self.kubelet.unprepare([c])
            u_answers.update(got)
            if measured:
                self.unprepare_s.append(took)
        self.unprep_cpu.stop()
        bc.check_unprepared(v, u_answers, claims, cdi_root)
        left = {
            gpu: (len(gis), len(cis))
            for gpu, (gis, cis) in _instances(_mig_state(self.plugin.run_dir)).items()
        }
        v.expect(
            all(n == (0, 0) for n in left.values()), f"{name}: MIG instances left after unprepare: {left}"
        )
        files = self.plugin.run_dir / "claims"
        described = sorted(p.name for p in files.iterdir()) if files.is_dir() else []
        v.expect(not described, f"{name}: description files left after unprepare: {described[:3]}")

    def _check_created(
        self,
        name: str,
        places: Sequence[Placement],
        claims: Sequence[bc.BenchClaim],
        answers: Mapping[str, Any],
    ) -> None:
        """The fake NVML holds exactly the allocated instances, and each claim's spec names its MIG UUID."""
        v, state = self.v, _instances(_mig_state(self.plugin.run_dir))
        defined = bc.cdi_devices_on_disk(self.plugin.cdi_root)
        gis, cis = state.get(places[0].parent, ([], []))
        v.expect(
            len(gis) == len(places),
            f"{name}: {len(gis)} GPU instances on {places[0].parent}, want {len(places)}",
        )
        for p, c in zip(places, claims, strict=True):
            at = [g for g in gis if g["profile_id"] == p.profile_id and g["placement"]["start"] == p.start]
            v.expect(len(at) == 1, f"{p.device}: {len(at)} GPU instances at the placement, want 1")
            ci = [x for g in at for x in cis if x["gpu_instance"] == g["id"]]
            v.expect(len(ci) == 1 and bool(ci[0].get("uuid")), f"{p.device}: compute instances {ci}")
            if len(ci) != 1 or (got := answers.get(c.claim.uid)) is None:
                continue
            mig_uuid = str(ci[0]["uuid"])
            specs = {defined[i] for d in got.devices for i in d.cdi_device_ids if i in defined}
            v.expect(
                any(mig_uuid in path.read_text() for path in specs),
                f"{p.device}: the CDI spec of claim {c.claim.uid} does not name the created {mig_uuid}",
            )


def _slice_writes(standin: StandIn, t0: float, t1: float) -> int:
    return sum(
        1 for r in standin.requests_between(t0, t1) if r["method"] != "GET" and r["path"].startswith(SLICES)
    )


def dynamic_mig_run(
    root: Path, claims: int, v: bc.Validation, *, rounds: int | None = None
) -> dict[str, Any]:
    """The dynamic MIG run (own stand-in with the gate on, own plugin). ``claims``: at least this many
    measured prepares (whole rounds of one GPU's placements); ``rounds`` overrides the number of rounds."""
    standin = StandIn(root / "dynamic-mig", gates={GATE: True}, kube_version=KUBE_VERSION).start()
    api = standin.http()
    volatile = tmpfs_dir()
    plugin = PluginProc(
        root / "dynamic-mig" / "plugin", "mig-node", PROFILE, standin.kubeconfig, volatile=volatile
    )
    try:
        ready = start_until_ready(standin, api, plugin)
        info = kubeletsim.register(plugin.registration_socket)
        pool = check_pool(api, plugin.node, v, mig_maxima(PROFILE))
        gpus = sorted(pool.placements)
        if not gpus:
            raise BenchError(
                f"{PROFILE} with {GATE} on published no dynamic {MIG_PROFILE} device:\n{plugin.log()}"
            )
        per_round = len(pool.placements[gpus[0]])
        n_rounds = rounds or max(2, math.ceil(claims / per_round))
        assert plugin.proc is not None
        assert standin.proc is not None
        pids = {"plugin": plugin.proc.pid, "api": standin.proc.pid}
        kubelet = Kubelet(info.endpoint)
        run = _Rounds(kubelet, api, plugin, pool, v, _Cpu(pids), _Cpu(pids))
        try:
            run.round("migwarm", pool.placements[gpus[0]], measured=False)
            run.prep_cpu, run.unprep_cpu = _Cpu(pids), _Cpu(pids)
            t0 = time.time()
            for r in range(n_rounds):
                run.round(f"mig{r:03d}", pool.placements[gpus[r % len(gpus)]], measured=True)
            t1 = time.time()
        finally:
            kubelet.close()
        writes = _slice_writes(standin, t0, t1)
        v.expect(writes == 0, f"dynamic MIG: {writes} ResourceSlice writes while MIG devices came and went")
        after = settled_pool(api, plugin.node)
        v.expect(
            sum(len(sl["spec"].get("devices") or []) for sl in after) == pool.devices, "the pool changed"
        )
        sigterm_s, code = plugin.sigterm_timed()
        v.expect(code == 0, f"dynamic MIG run: exit code {code}")
        v.expect(not plugin.registration_socket.exists(), "dynamic MIG run: registration socket left behind")
    finally:
        plugin.kill()
        api.close()
        standin.stop()
        if volatile is not None:
            shutil.rmtree(volatile, ignore_errors=True)
    n = len(run.prepare_s)
    return {
        "profile": PROFILE,
        "gate": {GATE: True},
        "kube_version": KUBE_VERSION,
        "mig_profile": MIG_PROFILE,
        "node": plugin.node,
        "devices": pool.devices,
        "slices": pool.slice_sizes,
        "counter_sets": len(pool.counter_sets),
        "gpus": len(gpus),
        "claims_per_round": per_round,
        "rounds": n_rounds,
        "claims": n,
        "exec_to_first_slice_ms": round(ready["exec_to_first_slice_s"] * 1000, 1),
        "rss_ready_kib": ready["memory_kib"],
        "prepare": {
            **latency_ms(run.prepare_s),
            **throughput(n, sum(run.prepare_s)),
            "cpu_ms_per_claim": run.prep_cpu.per_claim(n),
        },
        "unprepare": {
            **latency_ms(run.unprepare_s),
            **throughput(n, sum(run.unprepare_s)),
            "cpu_ms_per_claim": run.unprep_cpu.per_claim(n),
        },
        "calls": kubelet.calls,
        "sigterm_exit_ms": round(sigterm_s * 1000, 2),
        "nvml_creation_time": "not modelled: the mock creates MIG devices at once (real NVML: ~1 s per GPU "
        "instance)",
    }
