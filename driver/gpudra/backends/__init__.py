"""Hardware backends: the only code that talks to NVML, amdsmi or sysfs."""
