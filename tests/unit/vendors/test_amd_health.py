"""AMD health monitoring: the real AmdDriver.watch_health in a thread over a mock node (fake sysfs tree in
tmp_path, fake amdsmi); hardware changes go through FakeNode.serve, as when a mock's profile file is edited.

Absence is asserted with a sentinel, never with a sleep: a later change whose observation must come after any
the first change would have caused (the fake delivers an event of a profile only after that profile's tree is
in place, and a poll reads events before it checks the GPUs). RAS values are synthetic.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gpudra.model.health import ConditionKind, Effect, Observation
from gpudra.vendors.amd.driver import AmdDriver
from gpudra.vendors.amd.health import parse_err_count, read_ras_ue
from gpudra.vendors.amd.smi import AmdSmi
from gpudra.vendors.amd.smi_events import SmiEvent
from gpudra.vendors.mock.amd_profile import AmdProfile, parse_amd_profile
from gpudra.vendors.mock.fake_amdsmi import (
    AmdSmiEvtNotificationType,
    AmdSmiInitFlags,
    AmdSmiLibraryException,
    FakeAmdSmi,
)
from gpudra.vendors.mock.node import FakeNode
from gpudra.vendors.mock.profile import ProfileError

from .helpers import builtin_json

Json = dict[str, Any]
GPU0 = "e3ff74a1-0000-1000-80aa-140f9a5f9e31"  # amdsmi's UUID of the capture's GPU 0 (e3aa140f9a5f9e31)
GPU1 = "22ff74a1-0000-1000-8050-f807caf2231a"  # and of GPU 1 (2250f807caf2231a)
BUS0, BUS1 = "0000:05:00.0", "0000:27:00.0"
WAIT = 15.0  # seconds: generous, a watcher polls every 10 ms


def spx2(edit: Callable[[Json], None] | None = None, base: str = "mi300x-8-spx-nps1") -> Json:
    """The first two GPUs of a built-in MI300X profile, RAS on (all counters 0), no events."""
    data = builtin_json(base)
    data["gpus"] = data["gpus"][:2]
    for gpu in data["gpus"]:
        gpu["ras_features"] = "feature mask: 0x3fff"
        gpu["ras"] = {"umc": {"ue": 0, "ce": 0, "de": 0}, "gfx": {"ue": 0, "ce": 0}}
    if edit is not None:
        edit(data)
    return data


def profile(data: Json) -> AmdProfile:
    return parse_amd_profile(json.dumps(data), origin="test profile")


class Watch:
    """``driver.watch_health`` in a thread, its observations in a queue."""

    def __init__(self, driver: AmdDriver) -> None:
        self.observations: queue.Queue[Observation] = queue.Queue()
        self.stop = threading.Event()
        self.raised: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(driver,), daemon=True)
        self.thread.start()

    def _run(self, driver: AmdDriver) -> None:
        try:
            driver.watch_health(self.observations.put, self.stop)
        except BaseException as err:  # pragma: no cover - the assertion in close() reports it
            self.raised.append(err)

    def until(self, match: Callable[[Observation], bool]) -> tuple[Observation, list[Observation]]:
        """The first observation matching, and those that came before it."""
        before: list[Observation] = []
        while True:
            try:
                obs = self.observations.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no matching observation within {WAIT}s; saw {before}") from None
            if match(obs):
                return obs, before
            before.append(obs)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive(), "watch_health did not end after stop"
        assert self.raised == []


def of(kind: ConditionKind, device: str, *, cleared: bool = False) -> Callable[[Observation], bool]:
    return lambda o: o.kind is kind and o.device == device and o.cleared is cleared


class Node:
    """A mock AMD node whose driver polls fast, and its watch."""

    def __init__(self, data: Json, root: Path) -> None:
        self.data = copy.deepcopy(data)
        self.node = FakeNode(profile(data), root)
        self.driver = cast(AmdDriver, self.node.driver)
        self.driver.health_poll_seconds = 0.01
        self.driver.ras_poll_seconds = 0.0
        self.driver.discover()
        self.watch = Watch(self.driver)

    def edit(self, change: Callable[[Json], None], *, discover: bool = False) -> None:
        """Change the hardware (the mock's tree rewritten, the fake amdsmi serving the new profile)."""
        change(self.data)
        self.node.serve(profile(self.data))
        if discover:
            self.driver.discover()

    def sentinel(self, event_id: str, gpu: int = 1) -> list[Observation]:
        """Raise a thermal event on GPU ``gpu``; what came before its observation."""
        event = {"id": event_id, "type": "thermal_throttle"}
        self.edit(lambda d: d["gpus"][gpu].setdefault("events", []).append(event))
        _, before = self.watch.until(lambda o: o.kind is ConditionKind.THERMAL and event_id in self.fired())
        return before

    def fired(self) -> set[str]:
        assert self.node.amdsmi is not None
        return {event_id for event_id, _ in self.node.amdsmi.delivered}

    def close(self) -> None:
        try:
            self.watch.close()
        finally:
            self.node.close()


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Callable[[Json], Node]]:
    nodes: list[Node] = []

    def _open(data: Json) -> Node:
        nodes.append(Node(data, tmp_path / f"node{len(nodes)}"))
        return nodes[-1]

    yield _open
    for node in nodes:
        node.close()


def set_ras(gpu: int, block: str, **counts: int) -> Callable[[Json], None]:
    return lambda d: d["gpus"][gpu]["ras"][block].update(counts)


# -- start ------------------------------------------------------------------------------------------------


def test_each_monitored_gpu_is_reported_monitored_first(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    first, _ = node.watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
    _, before = node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    assert (first.value, first.effect) == ("", Effect.NO_SCHEDULE)
    assert before == []
    assert node.sentinel("s1") == []  # all counters 0: no ECC


def test_a_count_non_zero_at_start_is_reported_once(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2(set_ras(0, "umc", ue=2)))
    ecc, before = node.watch.until(of(ConditionKind.ECC, GPU0))
    assert [o.kind for o in before if o.device == GPU0] == [ConditionKind.UNMONITORED]
    assert (ecc.value, ecc.effect) == ("uncorrectable", Effect.NO_EXECUTE)
    assert "umc 2" in ecc.message
    assert [o for o in node.sentinel("s1") if o.kind is ConditionKind.ECC] == []


def test_the_watch_waits_for_the_first_discovery(tmp_path: Path) -> None:
    node = FakeNode(profile(spx2()), tmp_path)
    driver = cast(AmdDriver, node.driver)
    driver.health_poll_seconds = 0.01
    watch = Watch(driver)
    try:
        driver.discover()
        obs, _ = watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
        assert obs.device == GPU0
    finally:
        watch.close()
        node.close()


# -- RAS --------------------------------------------------------------------------------------------------


def test_uncorrectable_errors_rising_are_ecc_once_per_rise(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    node.edit(set_ras(0, "gfx", ue=1))
    ecc, _ = node.watch.until(of(ConditionKind.ECC, GPU0))
    assert "1 uncorrectable" in ecc.message
    assert "gfx +1" in ecc.message
    assert [o for o in node.sentinel("s1") if o.kind is ConditionKind.ECC] == []
    node.edit(set_ras(0, "umc", ue=3))
    again, _ = node.watch.until(of(ConditionKind.ECC, GPU0))
    assert "umc +3" in again.message
    assert [o for o in node.sentinel("s2") if o.kind is ConditionKind.ECC] == []


def test_corrected_and_deferred_errors_are_not_conditions(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    node.edit(set_ras(0, "umc", ce=500, de=7))
    assert [o for o in node.sentinel("s1") if o.device == GPU0] == []


def test_an_unreadable_block_keeps_its_baseline(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2(set_ras(0, "umc", ue=4)))
    node.watch.until(of(ConditionKind.ECC, GPU0))
    node.edit(lambda d: d["gpus"][0]["ras"].update(umc="Query currently inaccessible"))
    node.edit(lambda d: d["gpus"][0]["ras"].update(umc={"ue": 4, "ce": 0}))
    assert [o for o in node.sentinel("s1") if o.kind is ConditionKind.ECC] == []  # 4 again is no rise


# -- presence ---------------------------------------------------------------------------------------------


def test_a_gpu_gone_is_lost_and_cleared_when_back(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    gone = node.data["gpus"].pop(1)
    node.edit(lambda d: None)
    lost, _ = node.watch.until(of(ConditionKind.LOST, GPU1))
    assert (lost.value, lost.effect) == ("true", Effect.NO_EXECUTE)
    assert BUS1 in lost.message
    node.edit(lambda d: d["gpus"].append(gone))
    back, before = node.watch.until(of(ConditionKind.LOST, GPU1, cleared=True))
    assert back.value == "true"
    assert [o for o in before if o.kind is ConditionKind.LOST] == []  # reported once while gone


def test_a_gpu_gone_before_the_watch_looked_is_still_lost(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    gone = node.data["gpus"].pop(1)
    node.edit(lambda d: None, discover=True)  # rediscovery drops it at once
    node.watch.until(of(ConditionKind.LOST, GPU1))
    node.edit(lambda d: d["gpus"].append(gone), discover=True)
    node.watch.until(of(ConditionKind.LOST, GPU1, cleared=True))


def test_a_gpu_unbound_from_amdgpu_is_lost(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
    (node.node.sysfs / "bus" / "pci" / "drivers" / "amdgpu" / BUS0).unlink()
    node.watch.until(of(ConditionKind.LOST, GPU0))


# -- amdsmi events ----------------------------------------------------------------------------------------


def test_reset_and_thermal_events(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    node.edit(lambda d: d["gpus"][0].update(events=[{"id": "r1", "type": "gpu_reset", "message": "1"}]))
    reset, _ = node.watch.until(of(ConditionKind.RESET, GPU0))
    assert (reset.value, reset.effect) == ("gpu-reset", Effect.NO_SCHEDULE)
    assert "GPU_POST_RESET, GPU_PRE_RESET (2x)" in reset.message  # one observation for the pair
    node.edit(lambda d: d["gpus"][0]["events"].append({"id": "t1", "type": "thermal_throttle"}))
    thermal, before = node.watch.until(of(ConditionKind.THERMAL, GPU0))
    assert (thermal.value, thermal.effect) == ("throttle", Effect.NO_SCHEDULE)
    assert [o for o in before if o.kind is ConditionKind.RESET] == []


def test_vm_faults_and_ring_hangs_are_not_watched(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    node.edit(
        lambda d: d["gpus"][0].update(
            events=[{"id": "v", "type": "vmfault"}, {"id": "h", "type": "ring_hang"}]
        )
    )
    assert [o for o in node.sentinel("s1") if o.device == GPU0] == []
    assert "v" not in node.fired()  # never subscribed


def test_an_event_of_a_partition_is_its_gpus(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2(base="mi300x-8-cpx-nps4"))
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1, cleared=True))
    node.edit(lambda d: d["gpus"][0].update(events=[{"id": "p", "type": "gpu_pre_reset", "partition": 5}]))
    reset, before = node.watch.until(of(ConditionKind.RESET, GPU0))
    assert "GPU_PRE_RESET" in reset.message
    assert {o.device for o in before} <= {GPU0, GPU1}  # GPUs only: partitions take their parent's health


# -- not monitored, failures, stop ------------------------------------------------------------------------


def test_a_gpu_without_ras_or_amdsmi_is_unmonitored(mock: Callable[[Json], Node]) -> None:
    def no_amdsmi(d: Json) -> None:
        d["amdsmi"] = None
        del d["gpus"][1]["ras"], d["gpus"][1]["ras_features"]

    node = mock(spx2(no_amdsmi))  # without amdsmi the identity is AMD-<unique_id>
    node.watch.until(of(ConditionKind.UNMONITORED, "AMD-e3aa140f9a5f9e31", cleared=True))  # RAS monitors it
    obs, _ = node.watch.until(of(ConditionKind.UNMONITORED, "AMD-2250f807caf2231a"))
    assert (obs.value, obs.cleared) == ("no-ras-no-events", False)
    assert "not monitored" in obs.message


def test_amdsmi_events_alone_monitor_a_gpu_until_they_fail(mock: Callable[[Json], Node]) -> None:
    def events_only(d: Json) -> None:
        for gpu in d["gpus"]:
            del gpu["ras"], gpu["ras_features"]

    node = mock(spx2(events_only))
    node.watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
    node.edit(
        lambda d: d["amdsmi"].update(errors={"amdsmi_get_gpu_event_notification": "AMDSMI_STATUS_DRM_ERROR"})
    )
    obs, _ = node.watch.until(of(ConditionKind.UNMONITORED, GPU0))
    assert obs.value == "no-ras-no-events"


def test_an_amdsmi_without_the_event_api_leaves_ras(mock: Callable[[Json], Node]) -> None:
    def old_amdsmi(d: Json) -> None:
        d["amdsmi"]["missing_functions"] = ["AmdSmiEventReader"]
        del d["gpus"][1]["ras"], d["gpus"][1]["ras_features"]

    node = mock(spx2(old_amdsmi))
    node.watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
    node.watch.until(of(ConditionKind.UNMONITORED, GPU1))


def test_a_failing_report_neither_stops_nor_escapes_the_watch(tmp_path: Path) -> None:
    node = FakeNode(profile(spx2()), tmp_path)
    driver = cast(AmdDriver, node.driver)
    driver.health_poll_seconds = 0.01
    driver.discover()
    calls: queue.Queue[Observation] = queue.Queue()

    def report(obs: Observation) -> None:
        calls.put(obs)
        raise RuntimeError("store is down")

    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            driver.watch_health(report, stop)
        except BaseException as err:  # pragma: no cover - asserted below
            raised.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        devices = {calls.get(timeout=WAIT).device, calls.get(timeout=WAIT).device}
        assert devices == {GPU0, GPU1}  # the second GPU was still reported after the first report raised
    finally:
        stop.set()
        thread.join(timeout=WAIT)
        node.close()
    assert not thread.is_alive()
    assert raised == []


def test_stop_ends_the_watch(mock: Callable[[Json], Node]) -> None:
    node = mock(spx2())
    node.watch.until(of(ConditionKind.UNMONITORED, GPU0, cleared=True))
    node.watch.stop.set()
    node.watch.thread.join(timeout=WAIT)
    assert not node.watch.thread.is_alive()
    assert node.node.amdsmi is not None
    assert "amdsmi_stop_gpu_event_notification" in node.node.amdsmi.calls  # subscriptions ended


# -- sysfs reading ----------------------------------------------------------------------------------------


def test_err_count_text() -> None:
    assert parse_err_count("ue: 0\nce: 3\n") == {"ue": 0, "ce": 3}
    assert parse_err_count("ue: 1\nce: 0\nde: 5\n") == {"ue": 1, "ce": 0, "de": 5}
    assert parse_err_count("Query currently inaccessible\n") == {}


def test_ras_files_of_the_fake_tree(tmp_path: Path) -> None:
    data = spx2(
        lambda d: d["gpus"][0]["ras"].update(
            sdma="Query currently inaccessible", umc={"ue": 2, "ce": 1, "de": 0}
        )
    )
    node = FakeNode(profile(data), tmp_path)
    try:
        ras = node.sysfs / "bus" / "pci" / "devices" / BUS0 / "ras"
        assert (ras / "features").read_text() == "feature mask: 0x3fff\n"
        assert (ras / "umc_err_count").read_text() == "ue: 2\nce: 1\nde: 0\n"
        assert (ras / "gfx_err_count").read_text() == "ue: 0\nce: 0\n"
        assert read_ras_ue(node.sysfs, BUS0) == {"gfx": 0, "sdma": None, "umc": 2}
        assert read_ras_ue(node.sysfs, "0000:99:00.0") == {}
    finally:
        node.close()


# -- the fake amdsmi's events and the translation layer ---------------------------------------------------


def opened(data: Json) -> FakeAmdSmi:
    fake = FakeAmdSmi(profile(data))
    fake.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    return fake


def test_fake_events_go_to_subscribed_types_once_per_id_across_swaps() -> None:
    data = spx2(lambda d: d["gpus"][0].update(events=[{"id": "r", "type": "gpu_reset"},
                                                       {"id": "v", "type": "vmfault"}]))  # fmt: skip
    fake = opened(data)
    handle = fake.amdsmi_get_processor_handles()[0]
    types = [AmdSmiEvtNotificationType.GPU_PRE_RESET, AmdSmiEvtNotificationType.GPU_POST_RESET]
    reader = fake.AmdSmiEventReader(handle, types)
    # amdsmi 7.x: an event's processor_handle is a new c_void_p of the processor's pointer
    assert [(e["processor_handle"].value, e["event"], e["message"]) for e in reader.read(0)] == [
        (handle.value, "GPU_PRE_RESET", ""),
        (handle.value, "GPU_POST_RESET", ""),
    ]
    with pytest.raises(AmdSmiLibraryException) as nothing:
        reader.read(0)
    assert nothing.value.err_code == 40  # AMDSMI_STATUS_NO_DATA
    fake.serve(profile(data))  # the same events again: already delivered
    with pytest.raises(AmdSmiLibraryException):
        reader.read(0)
    reader.stop()
    with pytest.raises(AmdSmiLibraryException) as twice:
        reader.stop()
    assert twice.value.err_code == 1  # AMDSMI_STATUS_INVAL


def test_smi_event_watch_maps_handles_to_bus_ids() -> None:
    data = spx2(
        lambda d: d["gpus"][1].update(events=[{"id": "t", "type": "thermal_throttle", "message": "3:1"}])
    )
    fake = FakeAmdSmi(profile(data))
    smi = AmdSmi.open(fake)
    assert smi is not None
    watch = smi.watch_events(["THERMAL_THROTTLE", "NO_SUCH_TYPE"])
    assert watch is not None
    assert watch.bus_ids == {BUS0, BUS1}
    assert watch.read(0) == [SmiEvent(BUS1, "THERMAL_THROTTLE", "3:1")]
    assert watch.read(0) == []
    watch.close()
    smi.close()
    assert watch.read(0) is None


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda g: g.update(ras={"UMC": {"ue": 0, "ce": 0}}), "ras"),
        (lambda g: g.update(ras={"umc": {"ue": -1, "ce": 0}}), "umc"),
        (lambda g: g.update(ras={"umc": {"ue": 0}}), "umc.ce"),
        (lambda g: g.update(ras={"umc": {"ue": 0, "ce": 0, "xe": 1}}), "xe"),
        (lambda g: g.update(ras_features="0x3fff"), "ras_features"),
        (lambda g: g.update(events=[{"id": "a", "type": "gpu_hang"}]), "type"),
        (lambda g: g.update(events=[{"id": "a", "type": "vmfault", "message": "two words"}]), "message"),
        (
            lambda g: g.update(events=[{"id": "a", "type": "vmfault"}, {"id": "a", "type": "vmfault"}]),
            "distinct",
        ),
    ],
)
def test_profile_health_fields_are_checked(edit: Callable[[Json], None], key: str) -> None:
    data = spx2(lambda d: edit(d["gpus"][0]))
    with pytest.raises(ProfileError, match=key):
        profile(data)


def test_no_ras_means_no_ras_directory(tmp_path: Path) -> None:
    def no_ras(d: Json) -> None:
        del d["gpus"][0]["ras"], d["gpus"][0]["ras_features"]

    node = FakeNode(profile(spx2(no_ras)), tmp_path)
    try:
        assert not (node.sysfs / "bus" / "pci" / "devices" / BUS0 / "ras").exists()
        assert (node.sysfs / "bus" / "pci" / "devices" / BUS1 / "ras").is_dir()
    finally:
        node.close()
