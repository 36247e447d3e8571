"""Generated gRPC bindings of the kubelet plugin APIs (see proto/). Do not edit: run hack/gen-proto."""
