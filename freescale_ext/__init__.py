"""Python face of FreeScale's native code.

Importing this package loads `freescale_ext._C`, which registers the `torch.ops.freescale`
ops, and attaches their fake (meta) implementations and autograd formulas.
"""

from freescale_ext._loader import build_info, cuda_compiled
from freescale_ext.compressed import compressed_attention
from freescale_ext.ops import check_seq_offsets, hstu_attention

__all__ = [
    "build_info",
    "check_seq_offsets",
    "compressed_attention",
    "cuda_compiled",
    "hstu_attention",
]
