//! The order of a flush's rows: by partition bucket, then the table's sorting key, ascending,
//! nulls first.
//!
//! Most sorting keys are a few low-cardinality strings (country, path, event type) and a time.
//! Each such column can be replaced by a small order-preserving rank per row: the position of a
//! string among the batch's distinct strings, an integer's distance from the batch's minimum.
//! When the ranks of all key columns fit in one `u64` together, the rows are sorted by that one
//! integer with an LSD radix sort (a few linear passes, stable, no comparisons), which is an
//! order of magnitude cheaper than comparing rows column by column. Anything else (too many
//! distinct values, types without a rank) goes to Arrow's `lexsort_to_indices`. Both give the
//! same order up to ties between rows equal in every key column, which the radix sort keeps in
//! arrival order.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{lexsort_to_indices, SortColumn, SortOptions};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt64Type,
};
use arrow::error::ArrowError;

/// Bits per radix pass: 2,048 counters fit in L1.
const DIGIT_BITS: u32 = 11;

/// The permutation that sorts the rows by `keys` (first key most significant), ascending with
/// nulls first.
pub fn sort_to_indices(keys: &[ArrayRef]) -> Result<UInt32Array, ArrowError> {
    let rows = keys.first().map_or(0, |k| k.len());
    if let Some(indices) = packed_sort(keys, rows) {
        return Ok(indices);
    }
    lexsort(keys)
}

/// Arrow's row-by-row lexicographic sort, ascending with nulls first: the general path.
fn lexsort(keys: &[ArrayRef]) -> Result<UInt32Array, ArrowError> {
    let options = SortOptions {
        descending: false,
        nulls_first: true,
    };
    let columns: Vec<SortColumn> = keys
        .iter()
        .map(|k| SortColumn {
            values: k.clone(),
            options: Some(options),
        })
        .collect();
    lexsort_to_indices(&columns, None)
}

/// Whether `sort_to_indices` takes the radix path for these keys (for tests and benchmarks).
pub fn sorts_by_packed_key(keys: &[ArrayRef]) -> bool {
    plan(keys, keys.first().map_or(0, |k| k.len())).is_some()
}

/// The packed keys, their width and the row index's width, if key and index fit 64 bits.
fn plan(keys: &[ArrayRef], rows: usize) -> Option<(Vec<u64>, u32, u32)> {
    let (packed, key_bits) = pack(keys, rows)?;
    let index_bits = bits_for(rows.saturating_sub(1) as u64);
    (key_bits + index_bits <= 64 && rows <= u32::MAX as usize)
        .then_some((packed, key_bits, index_bits))
}

fn packed_sort(keys: &[ArrayRef], rows: usize) -> Option<UInt32Array> {
    let (packed, key_bits, index_bits) = plan(keys, rows)?;
    // The row index rides in the low bits: it is in order before the sort, and the stable LSD
    // passes over the key bits keep it in order among equal keys.
    let mut v: Vec<u64> = packed
        .iter()
        .enumerate()
        .map(|(i, k)| (k << index_bits) | i as u64)
        .collect();
    radix_sort(&mut v, index_bits, index_bits + key_bits);
    let mask = (1u64 << index_bits).wrapping_sub(1);
    Some(v.into_iter().map(|x| (x & mask) as u32).collect())
}

/// The rows' packed keys and their width, if every key column has ranks and all fit 64 bits.
fn pack(keys: &[ArrayRef], rows: usize) -> Option<(Vec<u64>, u32)> {
    let mut packed = vec![0u64; rows];
    let mut total = 0u32;
    for key in keys {
        let (ranks, bits) = ranks(key)?;
        total += bits;
        if total > 64 {
            return None;
        }
        if bits == 0 {
            continue;
        }
        for (p, r) in packed.iter_mut().zip(ranks) {
            // A 64-bit key is the only one (the total is at most 64), and `<< 64` overflows.
            *p = p.checked_shl(bits).unwrap_or(0) | r;
        }
    }
    Some((packed, total))
}

fn bits_for(max: u64) -> u32 {
    64 - max.leading_zeros()
}

/// Order-preserving ranks of a column's values (nulls rank below everything) and how many bits
/// they take; `None` for types without one.
fn ranks(col: &ArrayRef) -> Option<(Vec<u64>, u32)> {
    match col.data_type() {
        DataType::Int64 => Some(int_ranks(col, |i| col.as_primitive::<Int64Type>().value(i))),
        DataType::Int32 => Some(int_ranks(col, |i| {
            i64::from(col.as_primitive::<Int32Type>().value(i))
        })),
        DataType::Date32 => Some(int_ranks(col, |i| {
            i64::from(col.as_primitive::<Date32Type>().value(i))
        })),
        DataType::Timestamp(unit, _) => Some(match unit {
            TimeUnit::Second => {
                int_ranks(col, |i| col.as_primitive::<TimestampSecondType>().value(i))
            }
            TimeUnit::Millisecond => int_ranks(col, |i| {
                col.as_primitive::<TimestampMillisecondType>().value(i)
            }),
            TimeUnit::Microsecond => int_ranks(col, |i| {
                col.as_primitive::<TimestampMicrosecondType>().value(i)
            }),
            TimeUnit::Nanosecond => int_ranks(col, |i| {
                col.as_primitive::<TimestampNanosecondType>().value(i)
            }),
        }),
        DataType::UInt64 => Some(unsigned_ranks(col, |i| {
            col.as_primitive::<UInt64Type>().value(i)
        })),
        DataType::Float64 => Some(unsigned_ranks(col, |i| {
            total_order_bits(col.as_primitive::<Float64Type>().value(i))
        })),
        DataType::Boolean => Some(unsigned_ranks(col, |i| {
            u64::from(col.as_boolean().value(i))
        })),
        DataType::Utf8 => string_ranks(col),
        _ => None,
    }
}

/// Maps an f64 to a u64 whose unsigned order is `f64::total_cmp`'s order (Arrow's float sort).
fn total_order_bits(f: f64) -> u64 {
    let b = f.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

fn int_ranks(col: &ArrayRef, value: impl Fn(usize) -> i64) -> (Vec<u64>, u32) {
    // Shift into unsigned order, then rank as unsigned.
    unsigned_ranks(col, |i| (value(i) as u64) ^ (1 << 63))
}

/// Distance from the minimum, plus one when the column has nulls (which rank 0).
fn unsigned_ranks(col: &ArrayRef, value: impl Fn(usize) -> u64) -> (Vec<u64>, u32) {
    let n = col.len();
    let nulls = col.null_count() > 0;
    let valid = |i: usize| !nulls || col.is_valid(i);
    let (mut min, mut max) = (u64::MAX, 0u64);
    for i in (0..n).filter(|&i| valid(i)) {
        let v = value(i);
        min = min.min(v);
        max = max.max(v);
    }
    if min > max {
        // All null (or empty): one rank for all.
        return (vec![0; n], 0);
    }
    let offset = u64::from(nulls);
    let top = (max - min).saturating_add(offset);
    let ranks = (0..n)
        .map(|i| if valid(i) { value(i) - min + offset } else { 0 })
        .collect();
    (ranks, bits_for(top))
}

/// FxHash-style: the batch's own strings, hashed for a distinct count, need no DoS resistance.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// Position among the batch's distinct strings (byte order, as Arrow compares strings).
fn string_ranks(col: &ArrayRef) -> Option<(Vec<u64>, u32)> {
    let strings = col.as_string_opt::<i32>()?;
    let n = strings.len();
    let nulls = strings.null_count() > 0;
    let mut ids: HashMap<&str, u32, BuildHasherDefault<FxHasher>> = HashMap::default();
    let mut distinct: Vec<&str> = Vec::new();
    let mut row_ids: Vec<u32> = Vec::with_capacity(n);
    for i in 0..n {
        if nulls && strings.is_null(i) {
            row_ids.push(u32::MAX);
            continue;
        }
        let s = strings.value(i);
        let id = *ids.entry(s).or_insert_with(|| {
            distinct.push(s);
            (distinct.len() - 1) as u32
        });
        row_ids.push(id);
    }
    let mut order: Vec<u32> = (0..distinct.len() as u32).collect();
    order.sort_unstable_by_key(|&id| distinct[id as usize]);
    let offset = u64::from(nulls);
    let mut rank_of = vec![0u64; distinct.len()];
    for (rank, &id) in order.iter().enumerate() {
        rank_of[id as usize] = rank as u64 + offset;
    }
    let ranks = row_ids
        .iter()
        .map(|&id| {
            if id == u32::MAX {
                0
            } else {
                rank_of[id as usize]
            }
        })
        .collect();
    let top = (distinct.len() as u64).saturating_sub(1) + offset;
    Some((ranks, bits_for(top)))
}

/// Stable LSD radix sort of `v` by bits `lo..hi`.
fn radix_sort(v: &mut Vec<u64>, lo: u32, hi: u32) {
    let mut tmp = vec![0u64; v.len()];
    let mut shift = lo;
    while shift < hi {
        let width = DIGIT_BITS.min(hi - shift);
        let mask = (1u64 << width) - 1;
        let mut counts = vec![0usize; 1 << width];
        for &x in v.iter() {
            counts[((x >> shift) & mask) as usize] += 1;
        }
        // A digit every key shares orders nothing.
        if counts.contains(&v.len()) {
            shift += width;
            continue;
        }
        let mut next = 0;
        for c in counts.iter_mut() {
            let here = *c;
            *c = next;
            next += here;
        }
        for &x in v.iter() {
            let d = ((x >> shift) & mask) as usize;
            tmp[counts[d]] = x;
            counts[d] += 1;
        }
        std::mem::swap(v, &mut tmp);
        shift += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, UInt64Array};
    use std::sync::Arc;

    /// `sort_to_indices` and lexsort must agree on every key (ties aside: compare the sorted
    /// keys, not the permutations), whichever path `packed` says it takes.
    fn check(keys: Vec<ArrayRef>, packed: bool) {
        assert_eq!(
            sorts_by_packed_key(&keys),
            packed,
            "packed path expected: {packed}"
        );
        let packed = sort_to_indices(&keys).unwrap();
        let reference = lexsort(&keys).unwrap();
        for k in &keys {
            let a = arrow::compute::take(k, &packed, None).unwrap();
            let b = arrow::compute::take(k, &reference, None).unwrap();
            assert_eq!(&a, &b);
        }
        // Ties stay in arrival order.
        let mut seen = vec![false; packed.len()];
        for i in packed.values() {
            assert!(!std::mem::replace(&mut seen[*i as usize], true));
        }
    }

    /// A small deterministic generator for test data.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    #[test]
    fn packed_order_equals_lexsort_on_mixed_keys_with_nulls() {
        let mut s = 7u64;
        let n = 5_000;
        let words = ["de", "fr", "", "us", "é", "de\u{0}x", "zz", "Ab"];
        let country: StringArray = (0..n)
            .map(|_| {
                let r = lcg(&mut s);
                (!r.is_multiple_of(11)).then(|| words[(r % words.len() as u64) as usize])
            })
            .collect();
        let ts: Int64Array = (0..n)
            .map(|_| {
                let r = lcg(&mut s);
                (!r.is_multiple_of(13)).then_some(r as i64 % 100_000 - 50_000)
            })
            .collect();
        let ok: BooleanArray = (0..n)
            .map(|_| {
                let r = lcg(&mut s);
                (!r.is_multiple_of(5)).then_some(r.is_multiple_of(2))
            })
            .collect();
        let f: Float64Array = (0..n)
            .map(|_| {
                let r = lcg(&mut s);
                Some(match r % 6 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f64::NAN,
                    3 => -1.5,
                    4 => f64::INFINITY,
                    _ => (r % 1000) as f64 / 7.0,
                })
            })
            .collect();
        let u: UInt64Array = (0..n).map(|_| Some(u64::MAX - lcg(&mut s) % 4)).collect();
        check(
            vec![Arc::new(ok), Arc::new(country.clone()), Arc::new(ts)],
            true,
        );
        // Near the top of the u64 range: ranks in a few bits.
        check(vec![Arc::new(u), Arc::new(country.clone())], true);
        // Floats of both signs, NaN and infinities span all 64 bits, leaving none for the row
        // index: lexsort.
        check(vec![Arc::new(f.clone())], false);
        check(vec![Arc::new(f), Arc::new(country)], false);
    }

    #[test]
    fn wide_keys_fall_back_to_lexsort() {
        let a: Int64Array = (0..100)
            .map(|i| Some(i64::MIN + i * 7_919 * 1_000_000_007))
            .collect();
        let b = a.clone();
        let keys: Vec<ArrayRef> = vec![Arc::new(a), Arc::new(b)];
        assert!(!sorts_by_packed_key(&keys));
        let idx = sort_to_indices(&keys).unwrap();
        let sorted = arrow::compute::take(&keys[0], &idx, None).unwrap();
        let v = sorted.as_primitive::<Int64Type>().values();
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn empty_and_constant_columns_sort() {
        let empty: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(Vec::<i64>::new()))];
        assert_eq!(sort_to_indices(&empty).unwrap().len(), 0);
        let constant: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["x"; 10]))];
        assert_eq!(
            sort_to_indices(&constant).unwrap().values().to_vec(),
            (0..10).collect::<Vec<u32>>()
        );
    }
}
