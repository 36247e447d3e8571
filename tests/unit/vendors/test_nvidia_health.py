"""NVIDIA health watching: the real NvidiaDriver.watch_health over FakeNvml, events injected by profile swaps.

Each test starts the watcher in a thread, waits until it reported every device (it has registered them for
events by then), swaps the fake's profile (``fake.serve``) to deliver events or change the hardware, and
waits for the observations on a queue. "Nothing else was reported" is asserted against a sentinel event
delivered after the one under test (events arrive in order), never after a sleep.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.model.health import ConditionKind, Effect, Observation
from gpudra.vendors.base import HealthWatcher
from gpudra.vendors.mock.driver import open_mock_profile
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile, parse_profile
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.health_xid import DEFAULT_IGNORED_XIDS, XID_RULES, ignore_list, xid_rule

from .helpers import builtin_json

TIMEOUT = 15.0  # generous: a slow CI machine is not a failure
Data = dict[str, Any]
Open = Callable[..., tuple[NvidiaDriver, FakeNvml]]
Watcher = Callable[[HealthWatcher], "Watch"]
NO_SCHEDULE = Effect.NO_SCHEDULE
UNMONITORED, XID = ConditionKind.UNMONITORED, ConditionKind.XID
ECC, LOST = ConditionKind.ECC, ConditionKind.LOST


def _profile(data: Data) -> Profile:
    return parse_profile(json.dumps(data), origin="test profile")


def _uuid(data: Data, index: int) -> str:
    uuid: str = data["devices"][index]["uuid"]
    return uuid


def _with_events(data: Data, events: dict[int, list[Data]]) -> Profile:
    """``data`` with ``events`` added to its devices (by index)."""
    edited = copy.deepcopy(data)
    for index, added in events.items():
        edited["devices"][index]["events"] = edited["devices"][index].get("events", []) + added
    return _profile(edited)


def _xid(event_id: str, xid: int, **instance: int) -> Data:
    return {"id": event_id, "type": "xid", "value": xid, **instance}


class Watch:
    """``watch_health`` running in a thread, its observations on a queue (and in ``seen``)."""

    def __init__(self, driver: HealthWatcher) -> None:
        self.queue: queue.Queue[Observation] = queue.Queue()
        self.seen: list[Observation] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=driver.watch_health, args=(self.queue.put, self.stop), name="test-health", daemon=True
        )
        self.thread.start()

    def until(self, match: Callable[[Observation], bool], timeout: float = TIMEOUT) -> Observation:
        """The next observation that matches (every one taken is kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                obs = self.queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(obs)
            if match(obs):
                return obs
        raise AssertionError(f"no matching observation within {timeout} s; seen: {self.seen}")

    def started(self, devices: Iterable[str]) -> dict[str, Observation]:
        """Wait for the first status (UNMONITORED, cleared or not) of every one of ``devices``."""
        wanted, found = set(devices), dict[str, Observation]()
        while wanted - found.keys():
            obs = self.until(lambda o: o.kind is UNMONITORED and o.device in wanted)
            found.setdefault(obs.device, obs)
        return found

    def ended(self, timeout: float = 3.0) -> bool:
        self.stop.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def problems(self) -> list[Observation]:
        """What was reported so far besides the statuses (what is queued included)."""
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return [o for o in self.seen if o.kind is not UNMONITORED]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Open]:
    """The real NvidiaDriver over FakeNvml(profile), discovered once (a fast poll unless told otherwise)."""
    opened: list[NvidiaDriver] = []

    def _open(profile: Profile, **options: Any) -> tuple[NvidiaDriver, FakeNvml]:
        root = tmp_path / f"sys{len(opened)}"
        write_sysfs_tree(root, profile)
        fake = FakeNvml(profile)
        options.setdefault("health_poll_s", 0.05)
        driver = NvidiaDriver(fake, sysfs_root=root, **options)
        opened.append(driver)
        driver.discover()
        return driver, fake

    yield _open
    for driver in opened:
        driver.close()


@pytest.fixture
def watch() -> Iterator[Watcher]:
    started: list[Watch] = []

    def _start(driver: HealthWatcher) -> Watch:
        started.append(Watch(driver))
        return started[-1]

    yield _start
    for w in started:
        w.stop.set()
        w.thread.join(5)


def _wait_calls(fake: FakeNvml, call: str, more: int) -> None:
    """Wait until ``call`` was made ``more`` more times (the watcher polled), or fail."""
    target = fake.calls.count(call) + more
    deadline = time.monotonic() + TIMEOUT
    while fake.calls.count(call) < target:
        assert time.monotonic() < deadline, f"{call} was not called {more} more times"
        time.sleep(0.01)


# -- start: every device's status ---------------------------------------------------------------------------
def test_every_device_is_reported_monitored_at_start(node: Open, watch: Watcher) -> None:
    driver, _ = node(_profile(builtin_json("h100-mig-mixed")))
    w = watch(driver)
    statuses = w.started(driver.handles)
    assert len(statuses) == 11  # 8 GPUs and GPU 0's three MIG devices
    assert all(o.cleared and o.kind is UNMONITORED for o in statuses.values())
    assert w.problems() == []


def test_a_gpu_without_events_nor_ecc_is_unmonitored(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    data["devices"][1]["event_types"] = []  # supports no event type
    data["devices"][2]["event_types"] = None  # nvmlDeviceGetSupportedEventTypes: NOT_SUPPORTED
    data["devices"][3]["event_types"] = []
    data["devices"][3]["ecc_uncorrected_volatile"] = 0  # but its ECC counter can be polled
    data["devices"][4]["errors"] = {"nvmlDeviceRegisterEvents": "NVML_ERROR_NOT_SUPPORTED"}
    driver, _ = node(_profile(data))
    statuses = watch(driver).started(driver.handles)
    unmonitored = {u for u, o in statuses.items() if not o.cleared}
    assert unmonitored == {_uuid(data, 1), _uuid(data, 2), _uuid(data, 4)}
    assert {statuses[u].value for u in unmonitored} == {"unsupported"}
    assert all("cannot monitor" in statuses[u].message for u in unmonitored)


# -- Xid events ---------------------------------------------------------------------------------------------
def test_xid_79_makes_that_gpu_lost_and_nothing_else(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    fake.serve(_with_events(data, {3: [_xid("fell", 79)], 7: [_xid("sentinel", 92)]}))
    lost = w.until(lambda o: o.kind is LOST)
    assert (lost.device, lost.effect, lost.cleared) == (_uuid(data, 3), Effect.NO_EXECUTE, False)
    assert "Xid 79" in lost.message
    w.until(lambda o: o.value == "92")
    assert {o.device for o in w.problems() if o.value != "92"} == {_uuid(data, 3)}


def test_xids_take_the_effect_of_the_table(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    fake.serve(_with_events(data, {0: [_xid("a", 48), _xid("b", 63), _xid("c", 95), _xid("d", 119),
                                       _xid("e", 1234)]}))  # fmt: skip
    found = {o.value: o for o in (w.until(lambda o: o.kind is XID) for _ in range(5))}
    assert {x: o.effect for x, o in found.items()} == {
        "48": Effect.NO_EXECUTE, "63": Effect.NO_SCHEDULE, "95": Effect.NO_EXECUTE, "119": Effect.NO_EXECUTE,
        "1234": Effect.NO_SCHEDULE,  # an Xid the table does not know
    }  # fmt: skip
    assert {o.device for o in found.values()} == {_uuid(data, 0)}
    assert found["48"].message == "Xid 48: double-bit ECC error"


def test_an_ignored_xid_is_not_reported(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    fake.serve(_with_events(data, {1: [_xid("app", 13), _xid("app2", 109), _xid("sentinel", 92)]}))
    w.until(lambda o: o.value == "92")
    assert [o.value for o in w.problems()] == ["92"]


def test_the_ignore_list_is_the_drivers_parameter(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data), ignored_xids={92})
    w = watch(driver)
    w.started(driver.handles)
    fake.serve(_with_events(data, {1: [_xid("now-ignored", 92), _xid("not-now", 13), _xid("sentinel", 63)]}))
    w.until(lambda o: o.value == "63")
    assert [(o.value, o.effect) for o in w.problems()] == [("13", NO_SCHEDULE), ("63", NO_SCHEDULE)]


def test_a_mig_instances_xid_is_reported_on_its_mig_device(
    node: Open, watch: Watcher
) -> None:
    data = builtin_json("h100-mig-mixed")
    gpu, migs = _uuid(data, 0), [m["uuid"] for m in data["devices"][0]["mig_devices"]]  # GIs 2, 3, 4
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    fake.serve(_with_events(data, {0: [
        _xid("ci", 94, gpu_instance=2, compute_instance=0),  # that MIG device
        _xid("gi", 95, gpu_instance=3),  # every MIG device of GPU instance 3
        _xid("unknown", 64, gpu_instance=9, compute_instance=0),  # no published MIG device: its GPU
        _xid("gpu", 74),  # not attributable to an instance: the GPU
    ]}))  # fmt: skip
    got = [w.until(lambda o: o.kind is XID) for _ in range(4)]
    assert [(o.value, o.device) for o in got] == [("94", migs[0]), ("95", migs[1]), ("64", gpu), ("74", gpu)]
    assert got[1].message.endswith("(GPU instance 3)")
    assert "(GPU instance 9, compute instance 0, not a published MIG device)" in got[2].message


# -- ECC ----------------------------------------------------------------------------------------------------
def test_a_double_bit_ecc_event_is_ecc(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    dbe, sbe = {"id": "dbe", "type": "double_bit_ecc"}, {"id": "sbe", "type": "single_bit_ecc"}
    fake.serve(_with_events(data, {5: [dbe, sbe, _xid("sentinel", 92)]}))
    ecc = w.until(lambda o: o.kind is ECC)
    assert (ecc.device, ecc.value, ecc.effect) == (_uuid(data, 5), "uncorrectable", Effect.NO_EXECUTE)
    w.until(lambda o: o.value == "92")
    assert [o.kind for o in w.problems()] == [ECC, XID]  # single-bit ECC events are not watched


def test_a_rising_ecc_counter_is_reported_once_per_rise(
    node: Open, watch: Watcher
) -> None:
    data = builtin_json("dgx-h100")
    for device in data["devices"]:
        device["ecc_uncorrected_volatile"] = 0
    data["devices"][2]["ecc_uncorrected_volatile"] = 4  # errors before the watcher started: its baseline
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    polls = 2 * len(data["devices"])  # two polls of every GPU

    def counter(value: int) -> None:
        data["devices"][2]["ecc_uncorrected_volatile"] = value
        fake.serve(_profile(data))

    _wait_calls(fake, "nvmlDeviceGetTotalEccErrors", polls)
    assert w.problems() == []
    counter(7)
    first = w.until(lambda o: o.kind is ECC)
    assert (first.device, first.effect) == (_uuid(data, 2), Effect.NO_EXECUTE)
    assert first.message == "3 new uncorrectable ECC error(s) (volatile count 7)"
    _wait_calls(fake, "nvmlDeviceGetTotalEccErrors", polls)  # no new errors: nothing more
    counter(9)
    assert w.until(lambda o: o.kind is ECC).message.startswith("2 new ")
    counter(0)  # a GPU reset clears the volatile counter: a new baseline, not an error
    _wait_calls(fake, "nvmlDeviceGetTotalEccErrors", polls)
    counter(1)
    w.until(lambda o: o.kind is ECC and o.message.startswith("1 new "))
    _wait_calls(fake, "nvmlDeviceGetTotalEccErrors", polls)
    assert [o.device for o in w.problems()] == [_uuid(data, 2)] * 3


# -- a GPU lost, and back -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["lost", "gone"])
def test_a_lost_gpu_is_lost_until_it_answers_again(
    node: Open, watch: Watcher, how: str
) -> None:
    data = builtin_json("dgx-h100")
    lost_uuid = _uuid(data, 5)
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    broken = copy.deepcopy(data)
    if how == "lost":
        broken["devices"][5]["errors"] = {"*": "NVML_ERROR_GPU_IS_LOST"}
    else:  # gone from the node (the profile's positions and P2P matrix follow)
        del broken["devices"][5]
        for device in broken["devices"]:
            device.pop("index", None)
        broken.pop("p2p_status", None)
    fake.serve(_profile(broken))
    lost = w.until(lambda o: o.kind is LOST)
    assert (lost.device, lost.effect, lost.cleared) == (lost_uuid, Effect.NO_EXECUTE, False)
    fake.serve(_profile(data))
    back = w.until(lambda o: o.kind is LOST)
    assert (back.device, back.cleared) == (lost_uuid, True)
    assert {o.device for o in w.problems()} == {lost_uuid}
    # it was registered again: its events reach the watcher
    fake.serve(_with_events(data, {5: [_xid("after", 94)]}))
    assert w.until(lambda o: o.kind is XID).device == lost_uuid


# -- stopping, bursts, failures -----------------------------------------------------------------------------
def test_stop_ends_the_watcher_and_frees_its_event_set(
    node: Open, watch: Watcher
) -> None:
    driver, fake = node(_profile(builtin_json("dgx-h100")), health_poll_s=30.0)
    w = watch(driver)
    w.started(driver.handles)
    assert w.ended()
    assert fake.calls.count("nvmlEventSetCreate") == fake.calls.count("nvmlEventSetFree") == 1


def test_closing_the_driver_does_not_wait_for_the_watcher_but_ends_it(node: Open, watch: Watcher) -> None:
    # close() must fit the plugin's SIGTERM budget: it tells the watcher to end and shuts NVML down at once
    # (what the watcher reports afterwards, the stopped health store drops: test_health_rules)
    driver, fake = node(_profile(builtin_json("dgx-h100")))
    w = watch(driver)
    w.started(driver.handles)
    driver.close()
    assert "nvmlShutdown" in fake.calls
    w.thread.join(3)
    assert not w.thread.is_alive()


def test_a_burst_of_200_events_is_reported_whole(node: Open, watch: Watcher) -> None:
    data = builtin_json("dgx-h100")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    xids = (48, 63, 64, 74, 92, 94, 95, 119)
    burst = {gpu: [_xid(f"b{gpu}-{i}", xids[(gpu + i) % len(xids)]) for i in range(25)] for gpu in range(8)}
    fake.serve(_with_events(data, burst))
    got = [w.until(lambda o: o.kind is XID) for _ in range(200)]
    expected = Counter((_uuid(data, g), str(e["value"])) for g, events in burst.items() for e in events)
    assert Counter((o.device, o.value) for o in got) == expected
    assert w.ended()  # still responsive


def test_a_failing_event_loop_reports_unmonitored_and_recovers(
    node: Open, watch: Watcher
) -> None:
    data = builtin_json("pcie-l4-x2")
    driver, fake = node(_profile(data))
    w = watch(driver)
    w.started(driver.handles)
    broken = copy.deepcopy(data)
    broken["errors"] = {"nvmlEventSetWait_v2": "NVML_ERROR_UNKNOWN"}
    fake.serve(_profile(broken))
    failed = {w.until(lambda o: o.kind is UNMONITORED and not o.cleared).device for _ in range(2)}
    assert failed == set(driver.handles)
    fake.serve(_profile(data))
    again = {w.until(lambda o: o.kind is UNMONITORED and o.cleared).device for _ in range(2)}
    assert again == set(driver.handles)


def test_the_mock_passes_health_through_and_its_profile_file_delivers_events(
    tmp_path: Path, watch: Watcher
) -> None:
    data = builtin_json("pcie-l4-x2")
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    mock = open_mock_profile(str(path), tmp_path / "claims")
    try:
        mock.discover()
        w = watch(mock)
        w.started([_uuid(data, 0), _uuid(data, 1)])
        data["devices"][1]["events"] = [_xid("edited", 74)]
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")  # another size: seen as an edit
        mock.discover()  # the hot swap happens at a discovery pass
        got = w.until(lambda o: o.kind is XID)
        assert (got.device, got.value, got.effect) == (_uuid(data, 1), "74", Effect.NO_SCHEDULE)
        assert w.ended()
    finally:
        mock.close()


# -- the table ----------------------------------------------------------------------------------------------
def test_the_xid_table() -> None:
    assert frozenset({13, 31, 43, 45, 68, 109}) == DEFAULT_IGNORED_XIDS == ignore_list(None)
    assert xid_rule(79).kind is LOST
    assert not DEFAULT_IGNORED_XIDS & XID_RULES.keys()
    assert xid_rule(555).effect is Effect.NO_SCHEDULE
    with pytest.raises(ValueError, match="non-negative"):
        ignore_list([-1])
