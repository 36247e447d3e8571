"""The usage sampler over the mock driver, rendered by its Prometheus collector into a registry of its own:
device and per-claim series, the usage file another process writes, pods from the claim read at prepare, and
the claim's series gone once it is no longer prepared."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpudra.cli import parse_args
from gpudra.model.applied import AppliedState, Change
from gpudra.model.k8stypes import ResourceClaim
from gpudra.planning.offer import plan_offer
from gpudra.runtime.claimpods import ClaimPods, PodNotingClaims, reserved_pods
from gpudra.runtime.errors import UsageError
from gpudra.runtime.usage import UsageSampler, holdings
from gpudra.runtime.usage_metrics import UsageCollector
from gpudra.state.checkpoint import ClaimRecord, PreparedDevice
from gpudra.state.node import NodeStateStore
from gpudra.vendors.mock.driver import MockDriver, open_mock_profile
from gpudra.vendors.mock.fake_usage import USAGE_FILE, write_usage_file

UID = "0f3c3a5e-5b1c-4c55-9f0e-3b1f8c7d2a10"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[MockDriver]:
    driver = open_mock_profile("dgx-h100", tmp_path / "claims")
    yield driver
    driver.close()


class Rig:
    def __init__(self, driver: MockDriver) -> None:
        self.node = NodeStateStore(plan_offer(driver.discover()))
        self.records: dict[str, ClaimRecord] = {}
        self.pods = ClaimPods()
        self.registry = CollectorRegistry()
        collector = UsageCollector()
        self.registry.register(collector)
        def prepared() -> dict[str, ClaimRecord]:
            return dict(self.records)

        self.sampler = UsageSampler(driver, self.node, prepared, self.pods, collector.update)

    def hold(self, device: str) -> None:
        prepared = PreparedDevice("gpu", "node-a", device, (f"k8s.gpudra.io/claim={UID}-{device}",))
        self.records[UID] = ClaimRecord(UID, "team-a", "train", "PrepareCompleted", (prepared,), None)

    def scrape(self) -> Samples:
        text = generate_latest(self.registry).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def sample_until(self, check: Callable[[Samples], bool]) -> Samples:
        deadline = time.monotonic() + 5
        while True:
            self.sampler.sample()
            samples = self.scrape()
            if check(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.02)


def claim_series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and ("claim_uid", UID) in labels}


def test_a_held_gpu_has_claim_series_that_follow_the_usage_file_and_go_with_the_claim(
    tmp_path: Path, mock: MockDriver
) -> None:
    rig = Rig(mock)
    name, device = next(iter(rig.node.current.offer.devices.items()))
    rig.hold(name)
    reserved = [{"resource": "pods", "name": f"train-{i}", "uid": f"p{i}"} for i in range(2)]
    claim: dict[str, Any] = {"metadata": {"uid": UID}, "status": {"reservedFor": reserved}}
    rig.pods.note(claim)  # type: ignore[arg-type]
    write_usage_file(tmp_path / USAGE_FILE, {device.uuid: 0.8})  # where the mock of this run dir looks
    # the fake looks at the file at most every 50 ms
    first = rig.sample_until(lambda s: 0.8 in claim_series(s, "gpudra_claim_utilization_ratio").values())
    later = rig.sample_until(
        lambda s: sum(claim_series(s, "gpudra_claim_energy_joules_total").values())
        > sum(claim_series(first, "gpudra_claim_energy_joules_total").values())
    )
    (labels,) = claim_series(later, "gpudra_claim_power_watts")
    assert dict(labels) == {
        "device": name, "uuid": device.uuid, "vendor": "nvidia", "type": "gpu",
        "namespace": "team-a", "claim": "train", "claim_uid": UID, "pods": "train-0,train-1",
    }  # fmt: skip
    assert claim_series(later, "gpudra_claim_utilization_ratio") == {labels: 0.8}
    assert claim_series(later, "gpudra_claim_power_watts") == {labels: 60 + 340 * 0.8}
    assert claim_series(later, "gpudra_claim_gpus") == {labels: 1.0}
    assert claim_series(later, "gpudra_claim_energy_joules_total")[labels] > 0
    devices = {dict(k)["device"] for (n, k) in later if n == "gpudra_device_energy_joules_total"}
    assert devices == set(rig.node.current.offer.devices)  # all 8 GPUs, held or not
    assert later[("gpudra_usage_devices_read", ())] == 8
    del rig.records[UID]
    gone = rig.sample_until(lambda s: True)
    assert [k for k in gone if ("claim_uid", UID) in k[1]] == []
    assert len([k for k in gone if k[0] == "gpudra_device_power_watts"]) == 8
    assert gone[("gpudra_usage_samples_total", ())] >= 3


def test_a_claim_record_not_completed_or_of_an_unknown_device_has_no_series(mock: MockDriver) -> None:
    rig = Rig(mock)
    rig.hold("gpu-not-published-here")
    assert rig.sampler.sample().holders == ()
    rig.hold(next(iter(rig.node.current.offer.devices)))
    rig.records[UID] = ClaimRecord(UID, "team-a", "train", "PrepareStarted", rig.records[UID].devices, None)
    assert rig.sampler.sample().holders == ()


def test_reserved_pods_are_the_pods_of_the_claim_status() -> None:
    claim: Any = {"metadata": {"uid": UID}, "status": {"reservedFor": [
        {"resource": "pods", "name": "b", "uid": "1"}, {"resource": "pods", "name": "a", "uid": "2"},
        {"resource": "widgets", "apiGroup": "example.com", "name": "w", "uid": "3"}, {"resource": "pods"},
    ]}}  # fmt: skip
    assert reserved_pods(claim) == ("a", "b")
    assert reserved_pods({"metadata": {"uid": UID}}) == ()


def test_pods_are_noted_as_prepare_reads_a_claim_and_forgotten_after_it_is_gone() -> None:
    now = [0.0]
    pods = ClaimPods(clock=lambda: now[0])

    class Api:
        def get_claim(self, namespace: str, name: str) -> ResourceClaim:
            reserved = [{"resource": "pods", "name": "p", "uid": "1"}]
            claim: Any = {"metadata": {"uid": UID, "name": name, "namespace": namespace},
                          "status": {"reservedFor": reserved}}  # fmt: skip
            return cast(ResourceClaim, claim)

    claim = PodNotingClaims(Api(), pods).get_claim("team-a", "train")
    assert claim["metadata"]["name"] == "train"
    assert pods.pods(UID) == ("p",)
    pods.keep({UID})
    now[0] += 10_000
    pods.keep({UID})
    assert pods.pods(UID) == ("p",)  # prepared: kept however old
    pods.keep(set())
    assert pods.pods(UID) == ()


def test_the_usage_flags_and_their_twins() -> None:
    args = parse_args(["run", "--node-name", "n"], environ={})
    assert (args.usage_metrics, args.usage_interval) == ("on", 10.0)
    args = parse_args(["run", "--node-name", "n"], environ={"GPUDRA_USAGE_METRICS": "off",
                                                            "GPUDRA_USAGE_INTERVAL": "2.5"})  # fmt: skip
    assert (args.usage_metrics, args.usage_interval) == ("off", 2.5)
    for bad in (["--usage-interval", "0"], ["--usage-metrics", "maybe"]):
        with pytest.raises(UsageError, match=bad[0]):
            parse_args(["run", "--node-name", "n", *bad], environ={})


def test_a_mig_device_a_claim_created_is_held_by_its_recorded_uuid(mock: MockDriver) -> None:
    rig = Rig(mock)
    name, device = next(iter(rig.node.current.offer.devices.items()))
    prepared = PreparedDevice("gpu", "node-a", name, ())
    changes = (Change.of("mock-file", name, path="/x"), Change.of("mig-instance", name, uuid="MIG-made"))
    made = ClaimRecord(UID, "team-a", "tiny", "PrepareCompleted", (prepared,), None, AppliedState(changes))
    plain = ClaimRecord(UID, "team-a", "tiny", "PrepareCompleted", (prepared,), None)
    assert [h.uuid for h in holdings({UID: made}, rig.node.current.offer.devices, rig.pods)] == ["MIG-made"]
    assert [h.uuid for h in holdings({UID: plain}, rig.node.current.offer.devices, rig.pods)] == [device.uuid]
