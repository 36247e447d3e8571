"""Usage and energy metrics through the real ``gpudra run``: the mock's GPUs are made busy through the usage
file of the plugin's run dir, a claim is prepared by the kubelet stand-in, and /metrics is scraped over HTTP
until its per-claim series show the claim (with its pod) drawing rising energy; after unprepare they are
gone while the device series stay and the plugin lives on."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.vendors.mock.fake_usage import USAGE_FILE, write_usage_file
from tests.integration.conftest import PluginProcess, device_names, make_claim, pool_complete

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metered(api: FakeApiServer, short_tmp: Path) -> Iterator[tuple[PluginProcess, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--metrics-port", str(port), "--usage-interval", "0.1"]
    p = PluginProcess(short_tmp, api, extra_args=args).start()
    try:
        assert api.wait_for(lambda: pool_complete(api), timeout=20), p.log()
        yield p, port
    finally:
        if p.proc is not None:
            p.terminate()


def scrape(port: int) -> Samples:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_until(port: int, check: Callable[[Samples], bool], plugin: PluginProcess) -> Samples:
    """Scrape until ``check`` holds (at most 15 s: the sampler runs every 0.1 s)."""
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"the metrics never showed it; last scrape: {sorted(samples)[:40]}\n{plugin.log()}")
        time.sleep(0.05)


def of_claim(samples: Samples, name: str, uid: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and ("claim_uid", uid) in labels}


def reserve(api: FakeApiServer, claim: kubeletsim.Claim, pod: str) -> None:
    """Reserve the claim for ``pod``, as the scheduler does before the kubelet prepares it."""
    obj = api.get_object("ResourceClaim", claim.name, claim.namespace)
    assert obj is not None
    pod_uid = "2c1f7e0a-0000-4000-8000-000000000001"
    obj["status"]["reservedFor"] = [{"resource": "pods", "name": pod, "uid": pod_uid}]
    api.put_object(obj)


def test_a_prepared_claim_has_usage_series_with_rising_energy_until_it_is_unprepared(
    api: FakeApiServer, metered: tuple[PluginProcess, int]
) -> None:
    plugin, port = metered
    device = device_names(api)[0]
    claim = make_claim(api, "trainer", [device], namespace="team-a")
    reserve(api, claim, "trainer-0")
    uuid = next(d["attributes"]["uuid"]["string"] for s in api.list_objects("ResourceSlice")
                for d in s["spec"].get("devices", []) if d["name"] == device)  # fmt: skip
    write_usage_file(plugin.state_dir / USAGE_FILE, {uuid: 0.9})  # the run dir: the state dir here
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
        first = scrape_until(
            port, lambda s: 0.9 in of_claim(s, "gpudra_claim_utilization_ratio", claim.uid).values(), plugin
        )
        energy = of_claim(first, "gpudra_claim_energy_joules_total", claim.uid)
        later = scrape_until(
            port,
            lambda s: any(v > energy.get(k, 0) for k, v in of_claim(s, "gpudra_claim_energy_joules_total",
                                                                      claim.uid).items()),
            plugin,
        )  # fmt: skip
        (labels,) = of_claim(later, "gpudra_claim_energy_joules_total", claim.uid)
        assert dict(labels) == {
            "device": device, "uuid": uuid, "vendor": "nvidia", "type": "gpu",
            "namespace": "team-a", "claim": "trainer", "claim_uid": claim.uid, "pods": "trainer-0",
        }  # fmt: skip
        assert of_claim(later, "gpudra_claim_power_watts", claim.uid) == {labels: 60 + 340 * 0.9}
        assert of_claim(later, "gpudra_claim_gpus", claim.uid) == {labels: 1.0}
        device_labels = (("device", device), ("type", "gpu"), ("uuid", uuid), ("vendor", "nvidia"))
        assert later[("gpudra_device_utilization_ratio", device_labels)] == 0.9
        assert client.unprepare([claim]).claims[claim.uid].error == ""
    gone = scrape_until(port, lambda s: not any(("claim_uid", claim.uid) in k[1] for k in s), plugin)
    assert len([k for k in gone if k[0] == "gpudra_device_energy_joules_total"]) == 8  # devices stay
    assert gone[("gpudra_devices", (("type", "gpu"), ("vendor", "nvidia")))] == 8
    assert not [k for k in gone if k[0].endswith("_created")]  # prometheus_client's extra series are off
    assert gone[("gpudra_usage_samples_total", ())] > 0
    assert "usage metrics: sampling every 0.1 s" in plugin.log()
    plugin.assert_alive()


def test_usage_metrics_off_samples_nothing(api: FakeApiServer, short_tmp: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--metrics-port", str(port), "--usage-interval", "0.1", "--usage-metrics", "off"]
    plugin = PluginProcess(short_tmp, api, extra_args=args).start()
    try:
        assert api.wait_for(lambda: pool_complete(api), timeout=20), plugin.log()
        assert api.wait_for(lambda: "gpudra serving" in plugin.log(), timeout=20), plugin.log()
        samples = scrape(port)
        assert ("gpudra_slice_publishes_total", ()) in samples  # the other metrics are served
        usage = ("gpudra_usage_samples_total", "gpudra_device_energy_joules_total", "gpudra_claim_gpus")
        assert not [k for k in samples if k[0] in usage]  # no collector registered, no sampler started
        assert "usage metrics: sampling" not in plugin.log()
        plugin.assert_alive()
    finally:
        plugin.terminate()
