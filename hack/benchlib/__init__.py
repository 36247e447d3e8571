"""Helpers of ``hack/bench``, the gpudra benchmark. Not part of the gpudra package."""
