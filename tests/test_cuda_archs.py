"""Which GPUs a build's code runs on (`_C.cuda_archs_run_on`, the rule the ops and their error
messages use) and which archs `pip install` builds for (build_support/cuda_archs.py)."""

from __future__ import annotations

import pytest
import repo_modules

import freescale_ext
from freescale_ext import _C

cuda_archs = repo_modules.load("build_support/cuda_archs.py")


@pytest.mark.parametrize(
    "archs, capability, runs",
    [
        ("90a", (9, 0), True),
        ("90a", (8, 0), False),  # sm_90a code does not run on an A100
        ("90a", (10, 0), False),  # nor on a B200
        ("80", (8, 0), True),
        ("80", (8, 6), True),  # sm_80 SASS runs on 8.6 and 8.9: same major, newer minor
        ("80", (8, 9), True),
        ("86", (8, 0), False),  # not on an older minor
        ("80", (9, 0), False),  # nor on a newer major
        ("80+PTX", (9, 0), True),  # PTX of sm_80 is compiled by the driver for newer GPUs
        ("80+PTX", (12, 0), True),
        ("90a+PTX", (10, 0), False),  # arch-specific PTX: 9.0 only
        ("100a", (10, 3), False),
        ("100", (10, 3), True),
        ("80;90a", (9, 0), True),
        ("80;90a", (8, 6), True),
        ("80;90a", (12, 0), False),
        ("", (9, 0), False),
        ("80,90a", (9, 0), True),  # the build's own definition separates by ','
    ],
)
def test_archs_run_on(archs, capability, runs):
    assert _C.cuda_archs_run_on(archs, *capability) is runs


@pytest.mark.parametrize("archs", ["90b", "sm_90", "9", "80+ptx", "90a;;x"])
def test_archs_run_on_rejects_malformed_lists(archs):
    with pytest.raises(ValueError, match="is not of the form"):
        _C.cuda_archs_run_on(archs, 9, 0)


@pytest.mark.parametrize(
    "archs, capability, hint",
    [
        ("90a", (9, 0), ""),  # the build runs there: the error is something else
        (
            "90a",
            (8, 6),
            '. This extension was built with GPU code for FREESCALE_CUDA_ARCHS="90a", none of '
            "which runs on this sm_86 GPU: reinstall with FREESCALE_CUDA_ARCHS=86 (or with it "
            "unset, on a machine with this GPU)",
        ),
        ("80;100", (9, 0), "runs on this sm_90a GPU: reinstall with FREESCALE_CUDA_ARCHS=90a "),
        ("90a", (7, 5), "on this sm_75 GPU; FreeScale's GPU kernels need sm_80 or newer"),
    ],
)
def test_missing_code_hint(archs, capability, hint):
    got = _C.cuda_missing_code_hint(archs, *capability)
    assert hint in got if hint else got == ""


@pytest.mark.parametrize(
    "archs, capability, runs",
    [("90a", (9, 0), True), ("90a", (8, 6), False), ("80;90a", (8, 6), True)],
)
def test_compiled_for_reads_the_build(monkeypatch, archs, capability, runs):
    import freescale_ext._loader as loader

    monkeypatch.setattr(loader, "build_info", lambda: {"cuda": True, "cuda_archs": archs})
    loader.compiled_for.cache_clear()
    try:
        assert loader.compiled_for(capability) is runs
    finally:
        loader.compiled_for.cache_clear()
    monkeypatch.setattr(loader, "build_info", lambda: {"cuda": False, "cuda_archs": ""})
    try:
        assert loader.compiled_for(capability) is False
    finally:
        loader.compiled_for.cache_clear()


def test_this_build_names_its_archs():
    info = freescale_ext.build_info()
    if info["cuda"]:
        # As FREESCALE_CUDA_ARCHS spells it (the build's definition separates by ','), each entry
        # well formed (cuda_archs_run_on raises on any other).
        assert "," not in info["cuda_archs"]
        for entry in info["cuda_archs"].split(";"):
            _C.cuda_archs_run_on(entry, 9, 0)
    else:
        assert info["cuda_archs"] == ""


@pytest.mark.parametrize(
    "environ, capabilities, archs, source",
    [
        ({}, [], "90a", "no GPU visible: the default"),
        ({}, [(9, 0)], "90a", "the visible GPUs (sm_90)"),
        ({}, [(8, 0), (8, 0)], "80", "the visible GPUs (sm_80)"),
        ({}, [(9, 0), (8, 6)], "86;90a", "the visible GPUs (sm_86, sm_90)"),
        ({}, [(10, 0)], "100", "the visible GPUs (sm_100)"),
        ({"FREESCALE_CUDA_ARCHS": "90a;80+PTX"}, [(8, 6)], "90a;80+PTX", "FREESCALE_CUDA_ARCHS"),
        ({"FREESCALE_CUDA_ARCHS": " 90a 80 90a"}, [], "90a;80", "FREESCALE_CUDA_ARCHS"),
        ({"TORCH_CUDA_ARCH_LIST": "8.0;8.6+PTX"}, [(9, 0)], "80;86+PTX", "TORCH_CUDA_ARCH_LIST"),
        ({"TORCH_CUDA_ARCH_LIST": "9.0 10.0"}, [], "90a;100", "TORCH_CUDA_ARCH_LIST"),
        ({"TORCH_CUDA_ARCH_LIST": "9.0a+PTX"}, [], "90a+PTX", "TORCH_CUDA_ARCH_LIST"),
        (  # our own variable first
            {"FREESCALE_CUDA_ARCHS": "80", "TORCH_CUDA_ARCH_LIST": "9.0"},
            [],
            "80",
            "FREESCALE_CUDA_ARCHS",
        ),
        ({"FREESCALE_CUDA_ARCHS": " ", "TORCH_CUDA_ARCH_LIST": ""}, [(8, 9)], "89", None),
    ],
)
def test_resolve_cuda_archs(environ, capabilities, archs, source):
    got, got_source = cuda_archs.resolve_cuda_archs(environ, capabilities)
    assert got == archs
    if source is not None:
        assert got_source == source
    for entry in got.split(";"):  # the extension's rule takes what the build is given
        _C.cuda_archs_run_on(entry, 9, 0)


@pytest.mark.parametrize(
    "environ, capabilities, message",
    [
        ({"FREESCALE_CUDA_ARCHS": "75"}, [], "need sm_80 or newer"),
        ({}, [(7, 5)], r"visible GPUs \(sm_75\) asks for sm_75.*FREESCALE_WITH_CUDA=0"),
        ({"FREESCALE_CUDA_ARCHS": "90"}, [], "write 90a, not 90"),
        ({"FREESCALE_CUDA_ARCHS": "90+PTX"}, [], "write 90a, not 90"),
        ({"FREESCALE_CUDA_ARCHS": "sm_90a"}, [], "is not a CUDA arch"),
        ({"FREESCALE_CUDA_ARCHS": ";"}, [], "names no CUDA architecture"),
        ({"TORCH_CUDA_ARCH_LIST": "Ampere"}, [], "named architectures are not read"),
        ({"TORCH_CUDA_ARCH_LIST": "7.0;8.0"}, [], "need sm_80 or newer"),
    ],
)
def test_resolve_cuda_archs_rejects(environ, capabilities, message):
    with pytest.raises(ValueError, match=message):
        cuda_archs.resolve_cuda_archs(environ, capabilities)
