// SPDX-License-Identifier: GPL-2.0
//! XXH64 over whole 32-byte stripes, the checksum of the image's page sections: the module
//! computes it while it copies pages into the image (so nothing is read back), user space
//! verifies with the `xxhash-rust` crate (its test checks both agree). Shared verbatim by the
//! module (`kmod/ckpt_main.rs`) and user space, like `abi.rs`. Only inputs made of whole
//! stripes are supported (pages are): no tail handling, no buffering.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// Length of a stripe: inputs are multiples of it.
pub const STRIPE: usize = 32;

/// A running XXH64 (seed 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Xxh64 {
    acc: [u64; 4],
    len: u64,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self::new()
    }
}

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(h: u64, acc: u64) -> u64 {
    (h ^ round(0, acc)).wrapping_mul(P1).wrapping_add(P4)
}

impl Xxh64 {
    pub const fn new() -> Self {
        Self {
            acc: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            len: 0,
        }
    }

    /// Feeds `data`, whose length must be a multiple of [`STRIPE`]; a trailing partial
    /// stripe is ignored (and not counted), so callers feed whole pages.
    pub fn update(&mut self, data: &[u8]) {
        let mut stripes = data.chunks_exact(STRIPE);
        for s in &mut stripes {
            for (i, lane) in s.chunks_exact(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(lane);
                if let Some(acc) = self.acc.get_mut(i) {
                    *acc = round(*acc, u64::from_le_bytes(w));
                }
            }
            self.len = self.len.wrapping_add(STRIPE as u64);
        }
    }

    /// The digest of everything fed so far.
    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.acc;
        let mut h = if self.len >= STRIPE as u64 {
            let h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            merge(merge(merge(merge(h, v1), v2), v3), v4)
        } else {
            P5
        };
        h = h.wrapping_add(self.len);
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}
