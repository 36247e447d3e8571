"""Real MIG profile tables as the model holds them, for expected values in tests.

H100-SXM5-80GB from shared/fixtures/hardware/nvidia-gpus.json (capture-h100: NVML on an H100, and
`nvidia-smi mig -lgipp` for the placements), in NVML profile-index order (0, 1, 2, 3, 4, 7, 9): profile id,
compute slices, memorySizeMB (MiB), SMs, copy engines, decoders, JPEG, OFA, placements (start, size).
"""

from __future__ import annotations

from gpudra.model.inventory import EngineCounts, MigPlacement, MigProfile

MIB = 1 << 20


def _profile(  # noqa: PLR0917 - one positional column per fixture field, as the table reads
    name: str, pid: int, slices_: int, mem_mib: int, sm: int, ce: int, dec: int, jpg: int, ofa: int,
    placements: list[tuple[int, int]],
) -> MigProfile:  # fmt: skip
    return MigProfile(
        name=name, gi_profile_id=pid, compute_slices=slices_, memory_bytes=mem_mib * MIB, multiprocessors=sm,
        engines=EngineCounts(copy_engines=ce, decoders=dec, encoders=0, jpeg_engines=jpg, ofa_engines=ofa),
        placements=tuple(MigPlacement(s, z) for s, z in placements),
    )  # fmt: skip


H100_TABLE = (
    _profile("1g.10gb", 19, 1, 9984, 16, 1, 1, 1, 0, [(i, 1) for i in range(7)]),
    _profile("2g.20gb", 14, 2, 20096, 32, 2, 2, 2, 0, [(0, 2), (2, 2), (4, 2)]),
    _profile("3g.40gb", 9, 3, 40448, 60, 3, 3, 3, 0, [(0, 4), (4, 4)]),
    _profile("4g.40gb", 5, 4, 40448, 64, 4, 4, 4, 0, [(0, 4)]),
    _profile("7g.80gb", 0, 7, 81152, 132, 8, 7, 7, 1, [(0, 8)]),
    _profile("1g.10gb+me", 20, 1, 9984, 16, 1, 1, 1, 1, [(i, 1) for i in range(7)]),
    _profile("1g.20gb", 15, 1, 20096, 26, 1, 1, 1, 0, [(0, 2), (2, 2), (4, 2), (6, 2)]),
)
