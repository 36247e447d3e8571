"""The kubelet-facing gRPC servers: plugin registration and the DRA service (v1 and v1beta1)."""
