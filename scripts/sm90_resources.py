"""Registers, spills and wgmma serialization of the sm_90a HSTU kernels, from ptxas and the SASS.

Compiles each `csrc/attention/hopper/hstu_{fwd,bwd}_sm90_d*.cu` (or the files given) to a cubin
with `-Xptxas -v`, and reports per kernel: registers, spill bytes, ptxas's "wgmma serialized"
notes (C7511 and C7512: the kernel's wgmma lose their overlap for lack of registers, a silent
slowdown the spill counts do not show; ptxas then waits after every wgmma), and, where
`nvdisasm` is found (PATH, CUDA_HOME or the one Triton bundles), where the spill instructions
sit. In these kernels' SASS layout the prologue comes first, then the consumers' code, from
their register claim (`USETMAXREG.TRY_ALLOC`) on, then the producer's and its bias stagers',
from its release (`USETMAXREG.DEALLOC`) on, where a few bytes are expected at 24-32 registers.

FAIL (exit status 1) on a serialization note; WARN on spill instructions in the prologue or the
consumers' code (a failure too with --strict). Needs no GPU:

    python3 scripts/sm90_resources.py [files ...] [--arch sm_90a] [--strict]

Takes about 30-60 s per file on two cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"Compiling entry function '(\w+)'")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")
# C7511 "... for the wgmma pipeline in the function 'k'", C7512 "... for the function 'k'"
SERIALIZED = re.compile(r"\((C75\d\d)\)[^']*wgmma[^']*serialized[^']* the function '(\w+)'")
SASS_FUNCTION = re.compile(r"^\s*\.text\.(\w+):")


@dataclass
class Kernel:
    name: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    serialized: str = ""  # the note's code (C7511, C7512) where ptxas serialized its wgmma
    # SASS STL/LDL in the prologue, the consumers' code and the producer's (-1: not read)
    spills_by_part: list[int] = field(default_factory=lambda: [-1, -1, -1])


def find_tool(name: str) -> str | None:
    """`name` from PATH, CUDA_HOME/bin, /usr/local/cuda/bin, or the copy Triton ships."""
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    try:
        import triton  # noqa: PLC0415 (optional: only for its bundled binaries)

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return None


def parse_ptxas(log: str) -> dict[str, Kernel]:
    """Per-kernel registers and spills from `-Xptxas -v` output, and the serialization notes."""
    kernels: dict[str, Kernel] = {}
    current: Kernel | None = None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
        elif (m := SPILL.search(line)) and current is not None:
            current.spill_stores, current.spill_loads = int(m.group(2)), int(m.group(3))
        elif (m := REGISTERS.search(line)) and current is not None:
            current.registers = int(m.group(1))
        if m := SERIALIZED.search(line):
            kernels.setdefault(m.group(2), Kernel(m.group(2))).serialized = m.group(1)
    return kernels


def place_spills(sass: str, kernels: dict[str, Kernel]) -> None:
    """Counts each kernel's STL/LDL in its prologue, consumers' and producer's code."""
    name = None
    part = 0  # 0 prologue, 1 consumers (after TRY_ALLOC), 2 producer (after DEALLOC)
    for line in sass.splitlines():
        if m := SASS_FUNCTION.match(line):
            name = m.group(1)
            part = 0
            if name in kernels:
                kernels[name].spills_by_part = [0, 0, 0]
            continue
        if name not in kernels:
            continue
        if "USETMAXREG.TRY_ALLOC" in line:
            part = max(part, 1)
        elif "USETMAXREG.DEALLOC" in line:
            part = 2
        elif re.search(r"\b(STL|LDL)\b", line):
            kernels[name].spills_by_part[part] += 1


def compile_file(nvcc: str, source: Path, arch: str, nvdisasm: str | None) -> dict[str, Kernel]:
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "out.cubin"
        cmd = [nvcc, "-std=c++20", f"-gencode=arch=compute_{arch[3:]},code={arch}",
               f"-I{ROOT / 'csrc'}", "--expt-relaxed-constexpr", "-cubin", "-Xptxas", "-v",
               str(source), "-o", str(cubin)]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source}:\n{result.stderr[-4000:]}")
        kernels = parse_ptxas(result.stderr + result.stdout)
        if nvdisasm is not None:
            sass = subprocess.run(
                [nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True
            ).stdout
            place_spills(sass, kernels)
        return kernels


def short_name(mangled: str) -> str:
    """hstu_forward_sm90_kernel<__nv_bfloat16, 128, true, ...> from the mangled name, roughly."""
    m = re.search(r"(hstu_\w+?_kernel)I(\w+?)Li(\d+)E(.*?)EEEv", mangled)
    if not m:
        return mangled
    kind, dtype, dim, rest = m.groups()
    dtype = "bf16" if "bfloat16" in dtype else "fp16" if "half" in dtype else dtype
    flags = re.findall(r"Lb([01])", rest) + re.findall(r"E(\d)$", rest)
    return f"{kind}<{dtype}, d{dim}, {', '.join(flags)}>"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--strict", action="store_true", help="fail on WARN too")
    args = parser.parse_args()
    files = args.files or sorted((ROOT / "csrc/attention/hopper").glob("hstu_*_sm90_d*.cu"))
    nvcc = find_tool("nvcc")
    if nvcc is None:
        print("nvcc not found (set CUDA_HOME or PATH)", file=sys.stderr)
        return 2
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        print("nvdisasm not found: spill places are not reported", file=sys.stderr)
    failed = False
    for source in files:
        kernels = compile_file(nvcc, source, args.arch, nvdisasm)
        print(f"== {source.relative_to(ROOT) if source.is_absolute() else source}")
        for k in sorted(kernels.values(), key=lambda k: k.name):
            prologue, consumers, producer = k.spills_by_part
            where = ""
            if prologue >= 0:
                where = (f"; spill instructions: prologue {prologue}, consumers {consumers}, "
                         f"producer {producer}")  # fmt: skip
            warn = prologue > 0 or consumers > 0
            status = "FAIL" if k.serialized else "WARN" if warn else "ok"
            failed |= bool(k.serialized) or (args.strict and warn)
            print(f"  {status:4} {short_name(k.name)}: {k.registers} registers, "
                  f"spill {k.spill_stores} / {k.spill_loads} bytes{where}"
                  f"{f'; wgmma SERIALIZED ({k.serialized})' if k.serialized else ''}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
