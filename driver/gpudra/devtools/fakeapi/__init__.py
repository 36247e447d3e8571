"""A small stand-in Kubernetes API server (``resource.k8s.io/v1`` DRA objects, Nodes, Events) on real HTTP.

Used by ``gpudra demo``, the integration tests and the benchmark; not part of the driver's runtime. It
answers like a kube-apiserver for what the driver uses: paths, Status errors, validation messages, canonical
quantities, feature-gated field dropping, optimistic concurrency and watches.
"""

from gpudra.devtools.fakeapi.quantity import QuantityError, canonical, parse_quantity
from gpudra.devtools.fakeapi.server import FakeApiServer, RecordedRequest

__all__ = ["FakeApiServer", "QuantityError", "RecordedRequest", "canonical", "parse_quantity"]
