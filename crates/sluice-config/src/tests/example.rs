//! `config/sluice.example.toml` is what operators copy, so what it says about defaults must be
//! true. Every value it writes must be the default it documents, unless a comment marks it as
//! an example or as required.
//!
//! A value is marked when a comment containing `example` or `required` (any case) sits on its
//! own line, in the comment lines directly above it (no blank line in between), or on or
//! directly above the header of the `[...]` or `[[...]]` block holding it. A header's mark
//! covers its own block only, not the blocks nested under it (`[table.flush]` under a
//! `[[table]]`), so the defaults documented there are still checked.
//!
//! A value documents its default when removing it leaves the parsed config unchanged. One whose
//! removal changes the config (another value) or fails it (a required field) must be marked.

use std::path::Path;

use toml_edit::{Decor, DocumentMut, Item, Table};

use crate::Config;

fn example_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.example.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn example_config_parses() {
    let c = Config::from_toml_str(&example_text(), "sluice.example.toml").unwrap();
    assert!(!c.tables.is_empty() && !c.views.is_empty());
}

#[test]
fn example_config_writes_only_defaults_unless_marked() {
    let text = example_text();
    let full = Config::from_toml_str(&text, "sluice.example.toml").unwrap();
    let doc: DocumentMut = text.parse().unwrap();
    let mut leaves = Vec::new();
    collect_leaves(doc.as_table(), &mut Vec::new(), false, &mut leaves);
    assert!(leaves.len() > 30, "the walk found only {leaves:?}");

    let mut offending = Vec::new();
    for leaf in leaves.iter().filter(|l| !l.marked) {
        let mut without = doc.clone();
        let (key, tables) = leaf.path.split_last().unwrap();
        table_at(without.as_table_mut(), tables).remove(&key.0);
        let why = match Config::from_toml_str(&without.to_string(), "without") {
            Ok(c) if c == full => continue,
            Ok(_) => "is not the default".to_string(),
            // The last line of a TOML error is the problem; the others quote the file.
            Err(e) => format!(
                "cannot be left out (without it: {})",
                std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ),
        };
        offending.push(format!("{} = {} {why}", leaf.name(), leaf.value));
    }
    assert!(
        offending.is_empty(),
        "config/sluice.example.toml writes values it does not document as defaults; make \
         them the default, or mark them with a comment saying `example` or `required`:\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_marking_rule() {
    let doc: DocumentMut = r#"
# Not directly above: a blank line follows.

[a]
# An example.
above = 1
after = 2 # Required
plain = 3
# example, but for `plain` above rather than `below`

below = 4

# Example block.
[[b]]
x = 1
[b.nested]
y = 2
[[b]] # required
z = 3
"#
    .parse()
    .unwrap();
    let mut leaves = Vec::new();
    collect_leaves(doc.as_table(), &mut Vec::new(), false, &mut leaves);
    let marked: Vec<(String, bool)> = leaves.iter().map(|l| (l.name(), l.marked)).collect();
    let expected = [
        ("a.above", true),
        ("a.after", true),
        ("a.plain", false),
        ("a.below", false),
        ("b[0].x", true),
        ("b[0].nested.y", false),
        ("b[1].z", true),
    ];
    let expected: Vec<(String, bool)> = expected.iter().map(|(n, m)| (n.to_string(), *m)).collect();
    assert_eq!(marked, expected);
}

/// One key of the document and the tables above it: (key, index in an array of tables).
type KeyPath = Vec<(String, Option<usize>)>;

#[derive(Debug)]
struct Leaf {
    path: KeyPath,
    value: String,
    marked: bool,
}

impl Leaf {
    /// `table[0].column[2].name`, with keys that hold dots quoted.
    fn name(&self) -> String {
        let steps = self.path.iter().map(|(key, index)| {
            let key = if key.contains('.') {
                format!("\"{key}\"")
            } else {
                key.clone()
            };
            match index {
                Some(i) => format!("{key}[{i}]"),
                None => key,
            }
        });
        steps.collect::<Vec<_>>().join(".")
    }
}

/// Every value under `table`; inline tables and arrays are one value each.
fn collect_leaves(table: &Table, path: &mut KeyPath, header_marked: bool, out: &mut Vec<Leaf>) {
    for (key, item) in table.iter() {
        let Some((key_repr, _)) = table.get_key_value(key) else {
            continue;
        };
        match item {
            Item::None => {}
            Item::Value(value) => {
                let mark_above = comment_above(key_repr.leaf_decor());
                let mark_after = decor_text(value.decor().suffix());
                let mut bare = value.clone();
                bare.decor_mut().clear();
                path.push((key.to_string(), None));
                out.push(Leaf {
                    path: path.clone(),
                    value: bare.to_string(),
                    marked: header_marked || is_mark(&mark_above) || is_mark(&mark_after),
                });
                path.pop();
            }
            Item::Table(sub) => {
                // A dotted key (`a.b = 1`) has no header of its own: it is in its parent's block.
                let marked = if sub.is_dotted() {
                    header_marked
                } else {
                    header_mark(sub)
                };
                path.push((key.to_string(), None));
                collect_leaves(sub, path, marked, out);
                path.pop();
            }
            Item::ArrayOfTables(array) => {
                for (i, sub) in array.iter().enumerate() {
                    path.push((key.to_string(), Some(i)));
                    collect_leaves(sub, path, header_mark(sub), out);
                    path.pop();
                }
            }
        }
    }
}

fn table_at<'a>(mut table: &'a mut Table, path: &[(String, Option<usize>)]) -> &'a mut Table {
    for (key, index) in path {
        let item = table.get_mut(key).unwrap();
        table = match index {
            Some(i) => item.as_array_of_tables_mut().unwrap().get_mut(*i).unwrap(),
            None => item.as_table_mut().unwrap(),
        };
    }
    table
}

/// A header's mark: the comment lines directly above it, or a comment on its own line.
fn header_mark(table: &Table) -> bool {
    is_mark(&comment_above(table.decor())) || is_mark(&decor_text(table.decor().suffix()))
}

fn is_mark(comment: &str) -> bool {
    let comment = comment.to_lowercase();
    comment.contains("example") || comment.contains("required")
}

fn decor_text(raw: Option<&toml_edit::RawString>) -> String {
    raw.and_then(|r| r.as_str()).unwrap_or_default().to_string()
}

/// The comment lines that end right above an item: its prefix's lines after the last blank
/// one. (The prefix also holds everything since the previous item, blank lines included.)
fn comment_above(decor: &Decor) -> String {
    let prefix = decor_text(decor.prefix());
    // What follows the last newline is the item's own indentation, not a line above it.
    let prefix = prefix.trim_end_matches([' ', '\t']);
    let mut block: Vec<&str> = prefix
        .lines()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .collect();
    block.reverse();
    block.join("\n")
}
