"""gpudra: a Kubernetes DRA driver that publishes NVIDIA and AMD GPUs as ResourceSlices."""

__version__ = "0.1.0"
