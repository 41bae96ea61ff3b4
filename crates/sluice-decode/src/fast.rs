//! The hot path: a hand-written JSON scanner that walks an event once, converts the values on
//! the table's column paths straight into typed cells (strings borrowed from the payload where
//! they have no escapes), and validates everything else without building it.
//!
//! It only ever answers "this row, exactly as the reference path would build it" or "don't
//! know": anything unusual makes it give up and the reference path (a `serde_json::Value` per
//! event) decides, with its exact quarantine reason and message. That covers invalid JSON, not
//! an object, a wrong type, and the corners where serde_json's own reading of a value is subtle
//! (`-0`, integers beyond 64 bits, escaped keys, lone surrogates, nesting deeper than serde_json
//! allows). Bad events are rare, so the fallback costs nothing in practice, and the two paths
//! cannot disagree on a good row: the property test in this crate compares them.
//!
//! Numbers follow serde_json exactly (without its `float_roundtrip` feature): an integer
//! literal is a `u64`, or an `i64` when negative; anything with a fraction or an exponent is
//! `significand as f64` multiplied or divided once by the power of ten, the same operations on
//! the same operands, so the same bits.

use std::sync::OnceLock;

use sluice_config::ColumnType;

use crate::Cell;

/// serde_json refuses nesting deeper than 128; stay well inside it and let the reference path
/// judge anything deeper.
const MAX_DEPTH: u32 = 100;

/// Where each column sits in an event: keys of the top-level object, and of nested objects for
/// dotted `source` paths.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// The column whose value is at this key.
    leaf: Option<usize>,
    children: Vec<(Box<[u8]>, Node)>,
}

impl Node {
    /// The path tree of the columns; `None` when one column's path is a prefix of another's
    /// (a value that is both a cell and an object to descend into): the reference path only.
    pub(crate) fn build<'a>(paths: impl Iterator<Item = (usize, &'a [String])>) -> Option<Node> {
        let mut root = Node::default();
        for (column, path) in paths {
            let mut node = &mut root;
            for key in path {
                if node.leaf.is_some() {
                    return None;
                }
                let i = match node
                    .children
                    .iter()
                    .position(|(k, _)| **k == *key.as_bytes())
                {
                    Some(i) => i,
                    None => {
                        node.children.push((key.as_bytes().into(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
            }
            if node.leaf.is_some() || !node.children.is_empty() {
                return None;
            }
            node.leaf = Some(column);
        }
        Some(root)
    }

    #[inline]
    fn child(&self, key: &[u8]) -> Option<usize> {
        // Length and first byte settle almost every mismatch without a call to memcmp; keys
        // are short, so a byte loop settles the rest.
        let first = *key.first()?;
        self.children.iter().position(|(k, _)| {
            k.len() == key.len() && k[0] == first && k.iter().zip(key).all(|(a, b)| a == b)
        })
    }

    /// Forgets what was found below this node: a later duplicate key replaces the whole value.
    fn clear(&self, found: &mut [Found<'_>]) {
        if let Some(i) = self.leaf {
            found[i] = Found::Absent;
        }
        for (_, n) in &self.children {
            n.clear(found);
        }
    }
}

/// What a top-level key of an event leads to.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// `children[i]` of the root: a column, or a nested object on a column's path.
    Child(usize),
    /// No column's path: the value is checked and skipped.
    Unknown,
}

/// The top-level keys seen so far, as the exact bytes `"key":`, with what each leads to and
/// which key followed it last time. Events of one stream repeat a small set of keys in nearly
/// the same order (optional fields come and go), so each member is first tried against the key
/// that followed the previous one, then against the other known keys: a hit settles the key with
/// a comparison or two of machine words, instead of scanning it as a string and looking it up
/// among the columns. A new key takes the ordinary path and is learnt. A pattern is only ever
/// learnt from a key that was read and checked in full, so a hit reads exactly what the
/// ordinary path would.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    keys: Vec<LearntKey>,
    /// The key to try first for an object's first member.
    first: usize,
}

#[derive(Debug)]
struct LearntKey {
    pattern: Box<[u8]>,
    target: Target,
    /// The key that followed this one last time.
    next: usize,
}

/// Keys beyond this many are not learnt (a stream with ever-new keys gains nothing from it).
const MAX_LAYOUT: usize = 32;

impl Layout {
    /// The known key at the parser's position, if any: its index and target, with the parser
    /// moved past its colon. `hint` is tried first.
    #[inline]
    fn expect(&self, p: &mut Parser<'_>, hint: usize) -> Option<(usize, Target)> {
        let here = &p.b[p.i..];
        let hit = |k: &LearntKey| {
            here.len() >= k.pattern.len() && same(&here[..k.pattern.len()], &k.pattern)
        };
        let found = match self.keys.get(hint) {
            Some(k) if hit(k) => Some(hint),
            _ => self.keys.iter().position(hit),
        }?;
        let k = &self.keys[found];
        p.i += k.pattern.len();
        Some((found, k.target))
    }

    /// Records a key read the ordinary way; its index, if learnt.
    fn learn(&mut self, pattern: &[u8], target: Target) -> Option<usize> {
        if let Some(i) = self.keys.iter().position(|k| *k.pattern == *pattern) {
            return Some(i);
        }
        if self.keys.len() >= MAX_LAYOUT {
            return None;
        }
        self.keys.push(LearntKey {
            pattern: pattern.into(),
            target,
            next: usize::MAX,
        });
        Some(self.keys.len() - 1)
    }

    /// The hint for the member after key `i` (or the first member, for `None`).
    #[inline]
    fn hint_after(&self, i: Option<usize>) -> usize {
        match i {
            Some(i) => self.keys.get(i).map_or(usize::MAX, |k| k.next),
            None => self.first,
        }
    }

    #[inline]
    fn followed(&mut self, prev: Option<usize>, key: usize) {
        match prev {
            Some(p) => {
                if let Some(k) = self.keys.get_mut(p) {
                    k.next = key;
                }
            }
            None => self.first = key,
        }
    }
}

/// Equality of two slices of equal length, without a call to memcmp for short ones.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        // Two overlapping loads cover every length from 4 to 16.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// What the event held for one column.
pub(crate) enum Found<'de> {
    Absent,
    Null,
    Cell(Cell<'de>),
}

/// Parses `payload` as a JSON object and fills `found` (one entry per column, reset here).
/// `None`: not a clean case; let the reference path decide.
pub(crate) fn scan<'de>(
    payload: &'de [u8],
    root: &Node,
    types: &[ColumnType],
    layout: &mut Layout,
    found: &mut Vec<Found<'de>>,
) -> Option<()> {
    found.clear();
    found.extend(types.iter().map(|_| Found::Absent));
    let mut p = Parser { b: payload, i: 0 };
    p.ws();
    p.eat(b'{')?;
    p.object(root, types, found, 1, Some(layout))?;
    p.ws();
    (p.i == payload.len()).then_some(())
}

/// A JSON number as serde_json reads it.
#[derive(Clone, Copy)]
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A string value: its raw bytes between the quotes, whether it holds escapes, and whether it
/// is plain ASCII (then it needs no UTF-8 check).
struct RawStr<'de> {
    raw: &'de [u8],
    escaped: bool,
    ascii: bool,
}

impl<'de> RawStr<'de> {
    /// The text, if valid UTF-8 with valid escapes (serde_json refuses the event otherwise),
    /// without resolving the escapes.
    #[inline]
    fn check(&self) -> Option<()> {
        if !self.ascii || self.escaped {
            let text = valid_utf8(self.raw)?;
            if self.escaped {
                unescape(text)?;
            }
        }
        Some(())
    }
}

struct Parser<'de> {
    b: &'de [u8],
    i: usize,
}

const WS: [bool; 256] = {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\r' as usize] = true;
    t
};

/// Bytes that end the plain run of a string: the quote, a backslash, control characters.
const STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (in the high bit of each byte) the bytes of `w` that stop a string's plain run; the
/// lowest flag is exact (borrows only ever spoil flags above it).
#[inline]
fn stops(w: u64) -> u64 {
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    quote | backslash | control
}

impl<'de> Parser<'de> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !WS[c as usize] {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// Just inside an object or array: true if it closes right away (`close` read).
    #[inline]
    fn empty(&mut self, close: u8) -> Option<bool> {
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(true);
        }
        Some(false)
    }

    /// After a member or element: a `,` (true: another follows) or the closing byte (false).
    #[inline]
    fn separator(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        let here = self.b.get(self.i..end)?;
        // Byte by byte: four or five bytes do not pay for a call to memcmp.
        for (a, b) in here.iter().zip(word) {
            if a != b {
                return None;
            }
        }
        self.i = end;
        Some(())
    }

    /// The members of an object whose `{` was just read, filling `found` for the columns under
    /// `node`.
    fn object(
        &mut self,
        node: &Node,
        types: &[ColumnType],
        found: &mut [Found<'de>],
        depth: u32,
        mut layout: Option<&mut Layout>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        if self.empty(b'}')? {
            return Some(());
        }
        // The index of the previous member's key in the layout.
        let mut prev: Option<usize> = None;
        loop {
            let expected = match layout.as_deref() {
                Some(l) => l.expect(self, l.hint_after(prev)),
                None => None,
            };
            let target = match expected {
                Some((key, t)) => {
                    if let Some(l) = layout.as_deref_mut() {
                        l.followed(prev, key);
                    }
                    prev = Some(key);
                    t
                }
                None => {
                    let start = self.i;
                    self.eat(b'"')?;
                    let key = self.string()?;
                    // An escaped key (`"s\u0065q"`) means the same key unescaped: rare; the
                    // reference path reads it.
                    if key.escaped {
                        return None;
                    }
                    let key_end = self.i;
                    self.ws();
                    self.eat(b':')?;
                    let t = match node.child(key.raw) {
                        Some(c) => Target::Child(c),
                        None => {
                            key.check()?;
                            Target::Unknown
                        }
                    };
                    if let Some(l) = layout.as_deref_mut() {
                        // Only `"key":` with nothing between the quote and the colon.
                        let learnt = if self.i == key_end + 1 {
                            l.learn(&self.b[start..self.i], t)
                        } else {
                            None
                        };
                        if let Some(key) = learnt {
                            l.followed(prev, key);
                        }
                        prev = learnt;
                    }
                    t
                }
            };
            self.ws();
            match target {
                Target::Unknown => self.skip(depth)?,
                Target::Child(c) => {
                    let child = &node.children[c].1;
                    match child.leaf {
                        Some(col) => found[col] = self.cell(types[col])?,
                        None => {
                            child.clear(found);
                            // Anything but an object there means "not found", as in the
                            // reference.
                            if self.peek()? == b'{' {
                                self.i += 1;
                                self.object(child, types, found, depth + 1, None)?;
                            } else {
                                self.skip(depth)?;
                            }
                        }
                    }
                }
            }
            if !self.separator(b'}')? {
                return Some(());
            }
        }
    }

    /// A string whose opening quote was just read, up to and past its closing quote. Raw
    /// control characters are refused, as JSON requires; escapes and UTF-8 are checked by
    /// whoever uses the string (see [`valid_utf8`] and [`unescape`]).
    #[inline]
    fn string(&mut self) -> Option<RawStr<'de>> {
        let start = self.i;
        let b = self.b;
        let mut i = start;
        let mut escaped = false;
        // High bits seen: any byte >= 0x80 means the string needs a UTF-8 check.
        let mut high = 0u64;
        loop {
            // Eight bytes at a time through the plain run.
            while let Some(chunk) = b.get(i..i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().ok()?);
                let s = stops(w);
                if s != 0 {
                    let run = s.trailing_zeros() / 8;
                    high |= w & HIGHS & ((1u64 << (run * 8)) - 1);
                    i += run as usize;
                    break;
                }
                high |= w & HIGHS;
                i += 8;
            }
            loop {
                let c = *b.get(i)?;
                if STRING_STOP[c as usize] {
                    break;
                }
                high |= u64::from(c & 0x80);
                i += 1;
            }
            match b[i] {
                b'"' => {
                    self.i = i + 1;
                    return Some(RawStr {
                        raw: &b[start..i],
                        escaped,
                        ascii: high == 0,
                    });
                }
                b'\\' => {
                    escaped = true;
                    // Skip the escaped character (so `\"` does not end the string); what it
                    // means is checked by `unescape`.
                    i += 2;
                }
                _ => return None,
            }
        }
    }

    /// A JSON number, as serde_json would read it; `None` for invalid numbers and for the
    /// corners left to the reference path.
    fn number(&mut self) -> Option<Number> {
        let b = self.b;
        let mut i = self.i;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        let int_end = digits_end(b, i);
        match int_end - int_start {
            0 => return None,
            // A leading zero stands alone.
            n if n > 1 && b[int_start] == b'0' => return None,
            _ => {}
        }
        i = int_end;
        let mut exponent: i32 = 0;
        let mut float = false;
        let mut frac = int_end..int_end;
        if b.get(i) == Some(&b'.') {
            float = true;
            let end = digits_end(b, i + 1);
            if end == i + 1 {
                return None;
            }
            frac = i + 1..end;
            exponent = -((end - i - 1) as i32);
            i = end;
        }
        // Up to 19 digits always fit a u64; beyond that serde_json reads the number another way
        // (as a float of its own rounding): the reference path.
        if (int_end - int_start) + frac.len() > 19 {
            return None;
        }
        let sig = accumulate(accumulate(0, &b[int_start..int_end]), &b[frac]);
        if matches!(b.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            let negative_exp = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let digits_start = i;
            let mut exp: i32 = 0;
            while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
                exp = exp.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
                i += 1;
            }
            if i == digits_start || exp > 100_000 {
                return None;
            }
            exponent += if negative_exp { -exp } else { exp };
        }
        self.i = i;
        if !float {
            return if !negative {
                Some(Number::U64(sig))
            } else if sig == 0 || sig > 1 << 63 {
                // `-0` is the float -0.0 to serde_json, and below i64::MIN a float too.
                None
            } else {
                Some(Number::I64((sig as i64).wrapping_neg()))
            };
        }
        // serde_json: the significand as f64, then one multiplication or division by 10^|e|
        // from a table of f64 literals 1e0..=1e308; an infinite result is an error.
        let pow = *pow10().get(exponent.unsigned_abs() as usize)?;
        let mut f = sig as f64;
        if exponent >= 0 {
            f *= pow;
            if f.is_infinite() {
                return None;
            }
        } else {
            f /= pow;
        }
        Some(Number::F64(if negative { -f } else { f }))
    }

    /// One column's value, converted to its type exactly as the reference path converts it.
    fn cell(&mut self, ty: ColumnType) -> Option<Found<'de>> {
        let cell = match self.peek()? {
            b'"' => {
                self.i += 1;
                let s = self.string()?;
                let text = valid_utf8(s.raw)?;
                match ty {
                    ColumnType::String if !s.escaped => Cell::Str(text),
                    ColumnType::String => Cell::Owned(unescape(text)?),
                    // Times and dates never need escapes; the reference path reads odd ones.
                    _ if s.escaped => return None,
                    ColumnType::TimestampMs | ColumnType::TimestampUs => {
                        let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
                        Cell::I64(if ty == ColumnType::TimestampUs {
                            t.timestamp_micros()
                        } else {
                            t.timestamp_millis()
                        })
                    }
                    ColumnType::Date => {
                        let d = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
                        Cell::I64((d - crate::EPOCH_DAY).num_days())
                    }
                    _ => return None,
                }
            }
            b't' | b'f' => {
                let v = self.peek()? == b't';
                self.literal(if v { b"true" } else { b"false" })?;
                match ty {
                    ColumnType::Boolean => Cell::Bool(v),
                    ColumnType::String => Cell::Owned(v.to_string()),
                    _ => return None,
                }
            }
            b'n' => {
                self.literal(b"null")?;
                return Some(Found::Null);
            }
            b'-' | b'0'..=b'9' => number_cell(self.number()?, ty)?,
            _ => return None,
        };
        Some(Found::Cell(cell))
    }

    /// Any JSON value, checked as serde_json would check it, and not kept.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string()?.check()
            }
            open @ (b'{' | b'[') => {
                self.i += 1;
                if depth + 1 > MAX_DEPTH {
                    return None;
                }
                let close = if open == b'{' { b'}' } else { b']' };
                if self.empty(close)? {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.eat(b'"')?;
                        self.string()?.check()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip(depth + 1)?;
                    if !self.separator(close)? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }
}

/// `acc` followed by the ASCII digits `digits`, as a number; the caller keeps it within 19
/// digits. Eight digits at a time where it can.
#[inline]
fn accumulate(mut acc: u64, digits: &[u8]) -> u64 {
    let mut chunks = digits.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([b'0'; 8]));
        acc = acc.wrapping_mul(100_000_000).wrapping_add(eight_digits(w));
    }
    for &d in chunks.remainder() {
        acc = acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
    }
    acc
}

/// The value of eight ASCII digits read little-endian (first digit most significant): pairs,
/// then quads, then the whole, by multiply-and-shift.
#[inline]
fn eight_digits(w: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = w.wrapping_sub(0x3030_3030_3030_3030);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v = (v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))
        >> 32;
    v & 0xFFFF_FFFF
}

/// Where the run of ASCII digits starting at `i` ends.
#[inline]
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // A byte is a digit iff (byte ^ 0x30) < 10: flag bytes whose value is at least 10 (or
        // has its high bit set). Only the lowest flag matters, and it is exact.
        let t = w ^ (ONES * 0x30);
        let non_digit = (t | t.wrapping_add(ONES * 0x76)) & HIGHS;
        if non_digit != 0 {
            return i + (non_digit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// A number into a column, as the reference path converts a `serde_json::Value` number.
fn number_cell(n: Number, ty: ColumnType) -> Option<Cell<'static>> {
    // `Value::as_i64`: a non-negative integer up to i64::MAX, or a negative one.
    let as_i64 = || match n {
        Number::U64(u) => i64::try_from(u).ok(),
        Number::I64(i) => Some(i),
        Number::F64(_) => None,
    };
    Some(match ty {
        ColumnType::Int32 | ColumnType::Date => {
            let i = as_i64()?;
            i32::try_from(i).ok()?;
            Cell::I64(i)
        }
        ColumnType::Int64 | ColumnType::TimestampMs | ColumnType::TimestampUs => {
            Cell::I64(as_i64()?)
        }
        ColumnType::UInt64 => match n {
            Number::U64(u) => Cell::U64(u),
            _ => return None,
        },
        ColumnType::Float64 => Cell::F64(match n {
            Number::U64(u) => u as f64,
            Number::I64(i) => i as f64,
            Number::F64(f) => f,
        }),
        // The reference path prints the number back as serde_json does.
        ColumnType::String => Cell::Owned(match n {
            Number::U64(u) => u.to_string(),
            Number::I64(i) => i.to_string(),
            Number::F64(f) => serde_json::Number::from_f64(f)?.to_string(),
        }),
        ColumnType::Boolean => return None,
    })
}

/// The raw bytes of a string as text, if they are valid UTF-8 (serde_json refuses the event
/// otherwise).
#[inline]
fn valid_utf8(raw: &[u8]) -> Option<&str> {
    std::str::from_utf8(raw).ok()
}

/// A string's escapes resolved as serde_json resolves them; `None` for an invalid escape and
/// for anything serde_json treats specially (lone surrogates).
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        // Every valid escape is ASCII; checking first keeps the slice on a char boundary.
        let esc = rest.as_bytes().get(at + 1).filter(|c| c.is_ascii())?;
        rest = &rest[at + 2..];
        out.push(match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(rest)?;
                rest = &rest[4..];
                match hi {
                    0xD800..=0xDBFF => {
                        let lo = rest.strip_prefix("\\u").and_then(hex4)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        rest = &rest[6..];
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    c => char::from_u32(c)?,
                }
            }
            _ => return None,
        });
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(s: &str) -> Option<u32> {
    let digits = s.get(..4)?;
    if !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// 1e0 ..= 1e308 as f64, each the correctly rounded value of its literal, as in serde_json's
/// table.
fn pow10() -> &'static [f64; 309] {
    static TABLE: OnceLock<[f64; 309]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0.0; 309];
        for (i, v) in t.iter_mut().enumerate() {
            *v = format!("1e{i}").parse().unwrap_or(f64::INFINITY);
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Option<String> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
        };
        let n = p.number()?;
        (p.i == text.len()).then(|| match n {
            Number::U64(u) => format!("u{u}"),
            Number::I64(i) => format!("i{i}"),
            Number::F64(f) => format!("f{:?}", f.to_bits()),
        })
    }

    /// What serde_json makes of the same text, in the same notation.
    fn serde(text: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let n = v.as_number()?;
        Some(if let Some(u) = n.as_u64() {
            format!("u{u}")
        } else if let Some(i) = n.as_i64() {
            format!("i{i}")
        } else {
            format!("f{:?}", n.as_f64()?.to_bits())
        })
    }

    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        for text in [
            "0",
            "7",
            "-7",
            "1.5",
            "-1.5",
            "1234.567",
            "1e3",
            "1E-3",
            "2.5e+10",
            "0.1",
            "0.3",
            "123456789012345678",
            "9999999999999999999",
            "-9223372036854775808",
            "1e308",
            "1.7976931348623157e308",
            "0.000001",
            "3.141592653589793",
            "2.5e-300",
            "9007199254740993.5",
            "1.0",
            "-0.0",
        ] {
            assert_eq!(number(text), serde(text), "{text}");
        }
        // Left to the reference path: serde_json reads them as floats in its own ways, or
        // refuses them.
        for text in [
            "-0",
            "18446744073709551615",
            "-9223372036854775809",
            "1e400",
            "1e-400",
            "4.9e-324",
            "2.2250738585072014e-308",
            "01",
            "1.",
            "-",
            "1e",
        ] {
            assert_eq!(number(text), None, "{text}");
        }
    }

    #[test]
    fn digits_accumulate_eight_at_a_time() {
        for text in [
            "0",
            "7",
            "12345678",
            "123456789",
            "9999999999999999999",
            "1795132799196",
            "00000001",
        ] {
            assert_eq!(
                accumulate(0, text.as_bytes()),
                text.parse::<u64>().unwrap(),
                "{text}"
            );
        }
        assert_eq!(accumulate(12, b"34"), 1234);
        for (text, end) in [
            ("1795132799196,", 13),
            ("12345678", 8),
            ("1234567/", 7),
            ("123456789:", 9),
            ("0\u{ff}9999999", 1),
            ("12345678901234567890123.", 23),
            ("", 0),
        ] {
            assert_eq!(digits_end(text.as_bytes(), 0), end, "{text}");
        }
    }

    #[test]
    fn escapes_resolve_as_in_serde_json() {
        for raw in [
            r#"a\"b"#,
            r"c\\d",
            r"\/",
            r"caf\u00e9",
            r"\ud83d\ude00!",
            r"\n\t\r\b\f",
        ] {
            let serde: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
            assert_eq!(unescape(raw).as_deref(), Some(serde.as_str()), "{raw}");
        }
        for raw in [
            r"\x", r"\u12", r"\ud83d", r"\ude00", r"\ud83dx", "\\é", "\\",
        ] {
            assert_eq!(unescape(raw), None, "{raw}");
        }
    }

    #[test]
    fn string_runs_stop_at_quotes_backslashes_and_control_characters() {
        for (text, end) in [
            (r#"abcdefghijklmnop"tail"#, Some(16)),
            (r#"abc"#, None),
            ("abcdefgh\u{1}ijk\"", None),
            (r#"abcdefghij\"k"x"#, Some(13)),
            ("héllo wörld, ça va\"", Some(21)),
        ] {
            let mut p = Parser {
                b: text.as_bytes(),
                i: 0,
            };
            let got = p.string().map(|s| s.raw.len());
            assert_eq!(got, end, "{text}");
        }
    }
}
