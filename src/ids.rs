//! Hashes and seeds shared by every stage: the salted id hash behind splits, shards and
//! per-image rain seeds, seed mixing, and content hashes. Imports nothing from the crate.

use sha2::{Digest, Sha256};

/// SplitMix64 finaliser: derives independent seeds from one seed and a salt.
pub fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a salted id hash.
pub fn id_unit(salt: &str, id: &str) -> f64 {
    id_hash(salt, id) as f64 / 2f64.powi(64)
}

/// The salted 64-bit hash behind splits, shards and per-image rain seeds.
pub fn id_hash(salt: &str, id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(b":")
        .chain_update(id.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}
