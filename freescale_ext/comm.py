"""SM-free communication between the GPUs of a host (DESIGN §6).

Today: the runtime's host-side planning, in C++ (`csrc/comm/transfer_plan.*`) and tested on
CPUs. `pull_copies` / `push_copies` list the copies one rank issues for an all-to-all-v
(splits[s, d] bytes from rank s to rank d; torch's all_to_all_single buffer layout): peers from
rank + 1 on, the own chunk last, chunks cut into aligned pieces. `IssueQueue` orders copies by
priority class, so that a later high-priority transfer passes the remaining pieces of a bulk one.
The copy-engine runtime that executes these plans is not built yet.
"""

from __future__ import annotations

from freescale_ext._loader import _C

all_to_all_offsets = _C.comm.all_to_all_offsets
pull_copies = _C.comm.pull_copies
push_copies = _C.comm.push_copies
IssueQueue = _C.comm.IssueQueue

__all__ = ["IssueQueue", "all_to_all_offsets", "pull_copies", "push_copies"]
