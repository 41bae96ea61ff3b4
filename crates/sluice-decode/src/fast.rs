//! The hot path: JSON parsed straight into typed cells, with no intermediate
//! `serde_json::Value` (no map of owned keys and values per event), borrowing strings from the
//! payload where they have no escapes.
//!
//! It only ever answers "this row, exactly as the reference path would build it" or "don't
//! know": anything unusual (invalid JSON, not an object, a wrong type, a missing required field)
//! makes it give up, and the reference path (`TableBuffer::push_slow`) decides, with its exact
//! quarantine reason and message. Bad events are rare, so the fallback costs nothing in
//! practice, and the two paths cannot disagree on anything but a good row — which the
//! property test in this crate compares.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use sluice_config::ColumnType;

use crate::Cell;

/// Where each column sits in an event: keys of the top-level object, and of nested objects for
/// dotted `source` paths.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// The column whose value is at this key.
    leaf: Option<usize>,
    children: Vec<(String, Node)>,
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
                let i = match node.children.iter().position(|(k, _)| k == key) {
                    Some(i) => i,
                    None => {
                        node.children.push((key.clone(), Node::default()));
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

    fn child(&self, key: &str) -> Option<&Node> {
        self.children
            .iter()
            .find_map(|(k, n)| (k == key).then_some(n))
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
    found: &mut Vec<Found<'de>>,
) -> Option<()> {
    found.clear();
    found.extend(types.iter().map(|_| Found::Absent));
    let mut de = serde_json::Deserializer::from_slice(payload);
    de.deserialize_map(ObjectVisitor {
        node: root,
        types,
        found,
    })
    .ok()?;
    de.end().ok()
}

struct ObjectVisitor<'n, 'f, 'de> {
    node: &'n Node,
    types: &'n [ColumnType],
    found: &'f mut Vec<Found<'de>>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let Some(child) = self.node.child(&key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            match child.leaf {
                Some(i) => {
                    self.found[i] = map.next_value_seed(CellSeed(self.types[i]))?;
                }
                None => {
                    child.clear(self.found);
                    map.next_value_seed(NestedSeed {
                        node: child,
                        types: self.types,
                        found: self.found,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// A nested object on a column's path; any other value there means "not found" (as in the
/// reference path's lookup), so it is skipped.
struct NestedSeed<'n, 'f, 'de> {
    node: &'n Node,
    types: &'n [ColumnType],
    found: &'f mut Vec<Found<'de>>,
}

impl<'de> DeserializeSeed<'de> for NestedSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NestedVisitor(ObjectVisitor {
            node: self.node,
            types: self.types,
            found: self.found,
        }))
    }
}

struct NestedVisitor<'n, 'f, 'de>(ObjectVisitor<'n, 'f, 'de>);

impl<'de> Visitor<'de> for NestedVisitor<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.visit_map(map)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the payload unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// One column's value, converted to its type. Only conversions the reference path makes the
/// same way are accepted; anything else is an error, which sends the event to that path.
struct CellSeed(ColumnType);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Found<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Found<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

fn other<E: de::Error>() -> E {
    E::custom("left to the reference path")
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value for a {} column", self.0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found<'de>, E> {
        Ok(Found::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Found<'de>, E> {
        match self.0 {
            ColumnType::Boolean => Ok(Found::Cell(Cell::Bool(v))),
            ColumnType::String => Ok(Found::Cell(Cell::Owned(v.to_string()))),
            _ => Err(other()),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Found<'de>, E> {
        Ok(Found::Cell(match self.0 {
            ColumnType::Int32 | ColumnType::Date => {
                i32::try_from(v).map_err(|_| other::<E>())?;
                Cell::I64(v)
            }
            ColumnType::Int64 | ColumnType::TimestampMs | ColumnType::TimestampUs => Cell::I64(v),
            ColumnType::Float64 => Cell::F64(v as f64),
            ColumnType::String => Cell::Owned(v.to_string()),
            ColumnType::UInt64 | ColumnType::Boolean => return Err(other()),
        }))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Found<'de>, E> {
        match self.0 {
            ColumnType::UInt64 => Ok(Found::Cell(Cell::U64(v))),
            ColumnType::Float64 => Ok(Found::Cell(Cell::F64(v as f64))),
            ColumnType::String => Ok(Found::Cell(Cell::Owned(v.to_string()))),
            _ => self.visit_i64(i64::try_from(v).map_err(|_| other::<E>())?),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Found<'de>, E> {
        match self.0 {
            ColumnType::Float64 => Ok(Found::Cell(Cell::F64(v))),
            // The reference path prints the parsed number back: the same text, by construction.
            ColumnType::String => Ok(Found::Cell(Cell::Owned(
                serde_json::Value::from(v).to_string(),
            ))),
            _ => Err(other()),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Found<'de>, E> {
        match self.0 {
            ColumnType::String => Ok(Found::Cell(Cell::Str(v))),
            _ => self.visit_str(v),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Found<'de>, E> {
        Ok(Found::Cell(match self.0 {
            ColumnType::String => Cell::Owned(v.to_string()),
            ColumnType::TimestampMs | ColumnType::TimestampUs => {
                let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|_| other::<E>())?;
                Cell::I64(if self.0 == ColumnType::TimestampUs {
                    t.timestamp_micros()
                } else {
                    t.timestamp_millis()
                })
            }
            ColumnType::Date => {
                let d =
                    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| other::<E>())?;
                Cell::I64((d - crate::EPOCH_DAY).num_days())
            }
            _ => return Err(other()),
        }))
    }
}
