// The HSTU mask and relative bias, shared by host and device code.
//
// Mask semantics follow the reference implementation (DESIGN §4). Each position i gets an id:
//   id(i) = max(i - c + 1, 0) with a contextual prefix of c tokens (else i), then clamped to
//   max_id = len - c' - num_targets (c' = c - 1 when c > 0), so all targets share one id.
//   valid(i, j) = (i == j || id(i) > id(j)) && (max_attn_len == 0 || id(i) - id(j) <= max_attn_len)
//                 || (c > 0 && id(i) == 0 && id(j) < max_id)
// so history is causal, targets see the history and themselves, contextual rows see the whole
// history, and a local window limits how far back a row looks.
#pragma once

#include <cstdint>

#include "attention/host_device.h"

namespace freescale::attention {

struct HstuMask {
  int len = 0;
  int contextual_len = 0;
  int max_attn_len = 0;
  int max_id = 0;
  bool has_targets = false;

  FS_HOST_DEVICE static HstuMask make(int len, int contextual_len, int max_attn_len,
                                      bool has_targets, int num_targets) {
    HstuMask m;
    m.len = len;
    m.contextual_len = contextual_len;
    m.max_attn_len = max_attn_len;
    m.has_targets = has_targets;
    const int base = contextual_len > 0 ? len - contextual_len + 1 : len;
    m.max_id = base - (has_targets ? num_targets : 0);
    return m;
  }

  FS_HOST_DEVICE int id(int i) const {
    int x = contextual_len > 0 ? imax(i - contextual_len + 1, 0) : i;
    return has_targets ? imin(x, max_id) : x;
  }

  FS_HOST_DEVICE bool valid(int i, int j) const {
    const int ii = id(i);
    const int jj = id(j);
    bool ok = (i == j) || (ii > jj);
    if (max_attn_len > 0) ok = ok && (ii - jj <= max_attn_len);
    if (contextual_len > 0) ok = ok || (ii == 0 && jj < max_id);
    return ok;
  }

  // A plain causal mask (no contextual prefix, targets or window): valid(i, j) is j <= i.
  FS_HOST_DEVICE bool plain_causal() const {
    return contextual_len == 0 && max_attn_len == 0 && !has_targets;
  }

  // First index whose id is >= x (ids are non-decreasing in the index).
  FS_HOST_DEVICE int first_index_with_id_at_least(int x) const {
    if (x <= 0) return 0;
    return contextual_len > 0 ? x + contextual_len - 1 : x;
  }

  // Every pair of rows [r0, r0 + rows) x columns [c0, c0 + cols) is visible under a plain
  // causal mask (no window, no contextual prefix): the rows are inside the sequence, and every
  // column precedes every row and is history (not a target). Kernels skip the per-pair mask
  // on such tiles.
  FS_HOST_DEVICE bool tile_fully_visible(int r0, int rows, int c0, int cols) const {
    if (max_attn_len > 0 || contextual_len > 0) return false;
    if (r0 + rows > len) return false;
    const int history_end = has_targets ? max_id : len;
    return c0 + cols <= r0 && c0 + cols <= history_end;
  }

  // The rows that may attend to any column in [c0, c1) (c1 <= len), as a superset in two
  // parts: the contextual prefix [0, prefix_end) (id-0 rows see every history column; 0 when
  // it cannot see these columns) and [lo, hi) (a row never precedes its columns, and a window
  // stops rows whose id exceeds the last column's by more than its width).
  FS_HOST_DEVICE void row_ranges(int c0, int c1, int* prefix_end, int* lo, int* hi) const {
    *prefix_end = (contextual_len > 0 && id(c0) < max_id) ? imin(contextual_len, len) : 0;
    *lo = c0;
    *hi = len;
    if (max_attn_len > 0) {
      const int last_id = id(c1 - 1) + max_attn_len;  // the largest id a row may have
      if (!(has_targets && last_id >= max_id)) {
        *hi = imin(len, first_index_with_id_at_least(last_id + 1));
      }
    }
  }

  // The same rows as one range [lo, hi).
  FS_HOST_DEVICE void row_range(int c0, int c1, int* lo, int* hi) const {
    int prefix_end = 0;
    row_ranges(c0, c1, &prefix_end, lo, hi);
    if (prefix_end > 0) *lo = 0;
  }

  // A superset [lo, hi) of the columns any row in [r0, r1) may attend to; r1 <= len.
  FS_HOST_DEVICE void column_range(int r0, int r1, int* lo, int* hi) const {
    const bool contextual_row = contextual_len > 0 && id(r0) == 0;
    *hi = contextual_row ? len : imin(r1, len);
    if (max_attn_len == 0 || contextual_row) {
      *lo = 0;
    } else {
      *lo = first_index_with_id_at_least(id(r0) - max_attn_len);
    }
  }
};

// Index into the position table for the pair (i, j), clamped so bad lengths stay in bounds.
FS_HOST_DEVICE int hstu_pos_index(int i, int j, int max_seq_len) {
  int idx = max_seq_len - 1 + j - i;
  return idx < 0 ? 0 : (idx > 2 * max_seq_len - 2 ? 2 * max_seq_len - 2 : idx);
}

}  // namespace freescale::attention
