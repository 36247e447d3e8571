"""The gRPC floor: a DRA v1 server that does nothing, served like gpudra serves (same grpcio, same thread
pool size, a unix socket). ``python trivial_server.py SOCKET`` serves until SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from gpudra._proto import dra_v1_pb2, dra_v1_pb2_grpc


class _Nothing(dra_v1_pb2_grpc.DRAPluginServicer):
    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        return dra_v1_pb2.NodePrepareResourcesResponse(
            claims={c.uid: dra_v1_pb2.NodePrepareResourceResponse() for c in request.claims}
        )

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        return dra_v1_pb2.NodeUnprepareResourcesResponse(
            claims={c.uid: dra_v1_pb2.NodeUnprepareResourceResponse() for c in request.claims}
        )


def main(socket_path: str) -> int:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    dra_v1_pb2_grpc.add_DRAPluginServicer_to_server(_Nothing(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
