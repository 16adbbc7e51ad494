"""scripts/sm90_resources.py's reading of ptxas's report and of the SASS, on text shaped like
theirs (no nvcc run here): per-kernel registers and spill bytes, the C7511 and C7512 "wgmma
serialized" notes, and which part of a kernel (prologue, consumers, producer) holds its spill
instructions."""

from __future__ import annotations

import repo_modules

sm90_resources = repo_modules.load("scripts/sm90_resources.py")

PLAIN = "_ZN9freescale9attention6hopper24hstu_forward_sm90_kernelI6__halfLi64ELb0ELNS1_7FwdLoopE0EEEv14CUtensorMap_stS5_S5_NS0_10HstuParamsEi"  # noqa: E501
BIAS = "_ZN9freescale9attention6hopper24hstu_forward_sm90_kernelI13__nv_bfloat16Li128ELb1ELNS1_7FwdLoopE0EEEv14CUtensorMap_stS5_S5_NS0_10HstuParamsEi"  # noqa: E501

BWD = "_ZN9freescale9attention6hopper25hstu_backward_sm90_kernelI13__nv_bfloat16Li128ELb0ELb0EEEv14CUtensorMap_stS4_S4_S4_NS0_10HstuParamsEi"  # noqa: E501

PTXAS = f"""ptxas info    : Compiling entry function '{PLAIN}' for 'sm_90a'
ptxas info    : Function properties for {PLAIN}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers
ptxas info    : Compiling entry function '{BIAS}' for 'sm_90a'
ptxas info    : Function properties for {BIAS}
    24 bytes stack frame, 36 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 166 registers, used 1 barriers
ptxas info    : (C7511) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient register resources for the wgmma pipeline in the function '{PLAIN}'
ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient register resources for the function '{BWD}'
"""  # noqa: E501

SASS = f"""        .text.{PLAIN}:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1+0x4], R0 ;
        /*0020*/                   USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0 ;
        /*0030*/                   LDL R2, [R1+0x4] ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0050*/                   USETMAXREG.DEALLOC.CTAPOOL 0x18 ;
        /*0060*/                   EXIT ;
        .text.{BIAS}:
        /*0000*/                   USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xe8 ;
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0020*/                   USETMAXREG.DEALLOC.CTAPOOL 0x20 ;
        /*0030*/                   STL [R1], R4 ;
        /*0040*/                   LDL.LU R4, [R1] ;
        /*0050*/                   EXIT ;
"""


def test_reads_registers_spills_and_the_serialization_note():
    kernels = sm90_resources.parse_ptxas(PTXAS)
    assert set(kernels) == {PLAIN, BIAS, BWD}
    plain, bias = kernels[PLAIN], kernels[BIAS]
    assert (plain.registers, plain.spill_stores, plain.spill_loads) == (168, 0, 0)
    assert (bias.registers, bias.spill_stores, bias.spill_loads) == (166, 36, 40)
    # Both notes serialize the kernel's wgmma (C7512 words it "for the function").
    assert (plain.serialized, bias.serialized, kernels[BWD].serialized) == ("C7511", "", "C7512")


def test_places_spill_instructions_by_part():
    kernels = sm90_resources.parse_ptxas(PTXAS)
    sm90_resources.place_spills(SASS, kernels)
    assert kernels[PLAIN].spills_by_part == [1, 1, 0]  # prologue, consumers, producer
    assert kernels[BIAS].spills_by_part == [0, 0, 2]


def test_short_names_say_type_dim_and_flags():
    assert sm90_resources.short_name(PLAIN) == "hstu_forward_sm90_kernel<fp16, d64, 0, 0>"
    assert sm90_resources.short_name(BIAS) == "hstu_forward_sm90_kernel<bf16, d128, 1, 0>"
