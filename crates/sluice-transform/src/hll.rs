//! HyperLogLog sketches for `approx_distinct`: a view stores one per group and part, and reading
//! the table merges them, so a distinct count stays as good after any number of parts as over
//! the whole data (the union of sketches is exactly the sketch of the union).
//!
//! Sketches are persisted in Parquet, so both the hash and the layout are fixed by this file,
//! not by a library version: 2^12 one-byte registers (a relative standard error of 1.6 %, as
//! ClickHouse's `uniqHLL12`), serialized as `[1, 12, registers...]`. The hash mixes 8-byte words
//! with MurmurHash3's 64-bit finalizer; it never changes without a new version byte.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt32Type, UInt64Type,
};

const VERSION: u8 = 1;
const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;
const HEADER: usize = 2;
/// Seeds the word mixing, so that the empty string does not hash to 0.
const SEED: u64 = 0x51ce_d0c5_ee3a_7f21;

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The hash of a fixed-width value (its bits as a u64).
fn hash_word(w: u64) -> u64 {
    fmix64(w ^ SEED)
}

/// The hash of a byte string: its 8-byte words mixed in order, then its length.
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = SEED;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h ^ fmix64(w))
            .rotate_left(27)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ fmix64(u64::from_le_bytes(tail))).rotate_left(27);
    fmix64(h ^ b.len() as u64)
}

/// Why a stored sketch could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a Sluice HyperLogLog sketch: {0}")]
pub struct BadSketch(String);

/// A HyperLogLog sketch of 2^12 registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch {
    registers: Vec<u8>,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            registers: vec![0; REGISTERS],
        }
    }
}

impl Sketch {
    pub fn add_hash(&mut self, hash: u64) {
        let index = (hash as usize) & (REGISTERS - 1);
        // The rank: position of the first 1 bit in the remaining bits (a sentinel bit bounds it).
        let rank = ((hash >> PRECISION) | (1 << (64 - PRECISION))).trailing_zeros() + 1;
        let r = &mut self.registers[index];
        *r = (*r).max(rank as u8);
    }

    /// Adds every non-null value of `array`; `Err` for types without a stable hash here.
    pub fn add_array(&mut self, array: &ArrayRef) -> Result<(), String> {
        macro_rules! words {
            ($t:ty, $f:expr) => {{
                let a = array.as_primitive::<$t>();
                for v in a.iter().flatten() {
                    self.add_hash(hash_word($f(v)));
                }
            }};
        }
        match array.data_type() {
            DataType::Int64 => words!(Int64Type, |v: i64| v as u64),
            DataType::Int32 => words!(Int32Type, |v: i32| i64::from(v) as u64),
            DataType::UInt64 => words!(UInt64Type, |v: u64| v),
            DataType::UInt32 => words!(UInt32Type, |v: u32| u64::from(v)),
            DataType::Float64 => words!(Float64Type, |v: f64| v.to_bits()),
            DataType::Date32 => words!(Date32Type, |v: i32| i64::from(v) as u64),
            DataType::Timestamp(TimeUnit::Second, _) => {
                words!(TimestampSecondType, |v: i64| v as u64)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                words!(TimestampMillisecondType, |v: i64| v as u64)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                words!(TimestampMicrosecondType, |v: i64| v as u64)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                words!(TimestampNanosecondType, |v: i64| v as u64)
            }
            DataType::Boolean => {
                for v in array.as_boolean().iter().flatten() {
                    self.add_hash(hash_word(u64::from(v)));
                }
            }
            DataType::Utf8 => {
                for v in array.as_string::<i32>().iter().flatten() {
                    self.add_hash(hash_bytes(v.as_bytes()));
                }
            }
            DataType::LargeUtf8 => {
                for v in array.as_string::<i64>().iter().flatten() {
                    self.add_hash(hash_bytes(v.as_bytes()));
                }
            }
            DataType::Utf8View => {
                for v in array.as_string_view().iter().flatten() {
                    self.add_hash(hash_bytes(v.as_bytes()));
                }
            }
            DataType::Binary => {
                for v in array.as_binary::<i32>().iter().flatten() {
                    self.add_hash(hash_bytes(v));
                }
            }
            other => return Err(format!("approx_distinct of {other} is not supported")),
        }
        Ok(())
    }

    /// Adds the sketches stored in a binary array (merging partial states).
    pub fn merge_array(&mut self, array: &ArrayRef) -> Result<(), BadSketch> {
        let sketches = array
            .as_binary_opt::<i32>()
            .ok_or_else(|| BadSketch(format!("a column of {}", array.data_type())))?;
        for bytes in sketches.iter().flatten() {
            self.merge(&Sketch::from_bytes(bytes)?);
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    /// The estimated number of distinct values added.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (mut sum, mut zeros) = (0.0f64, 0usize);
        for &r in &self.registers {
            sum += 2f64.powi(-i32::from(r));
            zeros += usize::from(r == 0);
        }
        let raw = alpha * m * m / sum;
        // Linear counting for small cardinalities, where the raw estimate is biased.
        let e = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        e.round() as u64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + REGISTERS);
        out.push(VERSION);
        out.push(PRECISION as u8);
        out.extend_from_slice(&self.registers);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Sketch, BadSketch> {
        match b {
            [VERSION, p, registers @ ..]
                if u32::from(*p) == PRECISION && registers.len() == REGISTERS =>
            {
                Ok(Sketch {
                    registers: registers.to_vec(),
                })
            }
            _ => Err(BadSketch(format!(
                "{} bytes, starting {:?}",
                b.len(),
                &b[..b.len().min(2)]
            ))),
        }
    }

    /// Bytes held, for accumulators' memory accounting.
    pub fn size(&self) -> usize {
        REGISTERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn estimates_within_the_expected_error() {
        for n in [0u64, 1, 10, 1_000, 50_000, 1_000_000] {
            let mut s = Sketch::default();
            let a: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
            s.add_array(&a).unwrap();
            let e = s.estimate() as f64;
            let err = if n == 0 {
                e
            } else {
                (e - n as f64).abs() / n as f64
            };
            // Three standard errors of 1.6 %; exact for tiny sets (linear counting).
            assert!(err <= 0.05, "n {n}: estimate {e}");
        }
    }

    #[test]
    fn the_union_of_sketches_is_the_sketch_of_the_union() {
        let words: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let mut whole = Sketch::default();
        whole
            .add_array(&(Arc::new(StringArray::from(words.clone())) as ArrayRef))
            .unwrap();
        let mut merged = Sketch::default();
        for chunk in words.chunks(3_000) {
            let mut part = Sketch::default();
            part.add_array(&(Arc::new(StringArray::from(chunk.to_vec())) as ArrayRef))
                .unwrap();
            merged.merge(&Sketch::from_bytes(&part.to_bytes()).unwrap());
        }
        assert_eq!(merged, whole);
        assert_eq!(merged.estimate(), whole.estimate());
    }

    #[test]
    fn the_hash_is_pinned() {
        // Persisted sketches depend on these values: change them only with a new VERSION.
        assert_eq!(hash_word(42), 0x1136_8ac0_14bb_3c45);
        assert_eq!(hash_bytes(b"sluice"), 0xce97_fa33_546b_1d6a);
        assert!(Sketch::from_bytes(&[1, 12, 0]).is_err());
    }
}
