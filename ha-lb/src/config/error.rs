//! Configuration errors: every problem found, each pinned to `file:line:col`.
//!
//! Front-ends record where each item and value came from in a [`SourceMap`], so the
//! semantic checks (which only see the model) can still point at the right line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem: `file:line:col: message`. Lines and columns are 1-based; columns count
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.col, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one file, in source order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// One whole-file error (unreadable file and the like).
    pub fn single(file: &Path, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_path_buf(),
                line: 1,
                col: 1,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// A 1-based position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// An item of the model, by index, as the semantic checks address it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    Global,
    VrrpScript(usize),
    TrackFile(usize),
    VrrpInstance(usize),
    VrrpSyncGroup(usize),
    VirtualServerGroup(usize),
    VirtualServer(usize),
    /// (virtual server, real server)
    RealServer(usize, usize),
    /// The check of a real server.
    Check(usize, usize),
}

/// Positions of items, their keys and list elements, filled in by a front-end.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    file: PathBuf,
    at: HashMap<(Item, &'static str, Option<usize>), Pos>,
    /// Items that already produced an error while being read (in themselves or in an item
    /// inside them): their model values may be placeholders, so semantic checks skip them.
    tainted: HashSet<Item>,
    /// Keys whose value was the error: the item's other keys are as written, so checks
    /// across items that use only those (a duplicate VRID next to a bad priority) still run.
    tainted_keys: HashSet<(Item, &'static str)>,
    /// Items with an error that is not about one of their keys (a missing required key):
    /// no key of theirs is to be trusted.
    tainted_whole: HashSet<Item>,
    /// How messages name line N (index N - 1), for a front-end whose positions are
    /// translated afterwards (keepalived.conf); empty: the number itself.
    line_labels: Vec<String>,
}

impl SourceMap {
    pub fn new(file: &Path) -> SourceMap {
        SourceMap { file: file.to_path_buf(), ..SourceMap::default() }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where `item` starts (its table header).
    pub fn set_item(&mut self, item: Item, pos: Pos) {
        self.at.insert((item, "", None), pos);
    }

    /// Where the value of `key` of `item` is.
    pub fn set_key(&mut self, item: Item, key: &'static str, pos: Pos) {
        self.at.insert((item, key, None), pos);
    }

    /// Where element `idx` of the list `key` of `item` is.
    pub fn set_elem(&mut self, item: Item, key: &'static str, idx: usize, pos: Pos) {
        self.at.insert((item, key, Some(idx)), pos);
    }

    /// Name lines in messages ("at line …") with these labels, line N with `labels[N - 1]`.
    pub fn set_line_labels(&mut self, labels: Vec<String>) {
        self.line_labels = labels;
    }

    /// Line `pos.line` as a message names it: "12", or a front-end's label for it.
    pub fn line_label(&self, pos: Pos) -> String {
        pos.line
            .checked_sub(1)
            .and_then(|i| self.line_labels.get(i))
            .cloned()
            .unwrap_or_else(|| pos.line.to_string())
    }

    /// An error at `pos` while reading `item` (`inner`: the innermost item being read; the
    /// others only contain it): the key whose value is at `pos` is tainted, or the whole
    /// item when none is.
    pub fn taint_at(&mut self, item: Item, pos: Pos, inner: bool) {
        self.tainted.insert(item);
        if !inner {
            return;
        }
        let key = self
            .at
            .iter()
            .find(|((i, k, _), p)| *i == item && !k.is_empty() && **p == pos)
            .map(|((_, k, _), _)| *k);
        match key {
            Some(k) => {
                self.tainted_keys.insert((item, k));
            }
            None => {
                self.tainted_whole.insert(item);
            }
        }
    }

    /// The virtual servers as read became the model's list: `origins[j]` is the index (as
    /// read) of the model's virtual server `j` — one read with a `group` is one per member.
    /// Each gets the positions and taints of the one it came from (with its real servers
    /// and checks).
    pub fn expand_virtual_servers(&mut self, origins: &[usize]) {
        fn vs_index(item: Item) -> Option<usize> {
            match item {
                Item::VirtualServer(v) | Item::RealServer(v, _) | Item::Check(v, _) => Some(v),
                _ => None,
            }
        }
        fn with_vs(item: Item, j: usize) -> Item {
            match item {
                Item::VirtualServer(_) => Item::VirtualServer(j),
                Item::RealServer(_, r) => Item::RealServer(j, r),
                Item::Check(_, r) => Item::Check(j, r),
                other => other,
            }
        }
        let remap = |item: Item| -> Vec<Item> {
            match vs_index(item) {
                None => vec![item],
                Some(v) => (origins.iter().enumerate())
                    .filter(|(_, o)| **o == v)
                    .map(|(j, _)| with_vs(item, j))
                    .collect(),
            }
        };
        self.at = std::mem::take(&mut self.at)
            .into_iter()
            .flat_map(|((item, k, e), p)| remap(item).into_iter().map(move |i| ((i, k, e), p)))
            .collect();
        self.tainted = std::mem::take(&mut self.tainted).into_iter().flat_map(remap).collect();
        self.tainted_whole =
            std::mem::take(&mut self.tainted_whole).into_iter().flat_map(remap).collect();
        self.tainted_keys = std::mem::take(&mut self.tainted_keys)
            .into_iter()
            .flat_map(|(item, k)| remap(item).into_iter().map(move |i| (i, k)))
            .collect();
    }

    pub fn is_tainted(&self, item: Item) -> bool {
        self.tainted.contains(&item)
    }

    /// Whether `keys` of `item` were read without an error (its other keys may have had one).
    pub fn keys_clean(&self, item: Item, keys: &[&str]) -> bool {
        !self.tainted_whole.contains(&item)
            && !keys.iter().any(|k| self.tainted_keys.contains(&(item, *k)))
    }

    /// Position of the item itself (falls back to the parent, then 1:1).
    pub fn item(&self, item: Item) -> Pos {
        if let Some(p) = self.at.get(&(item, "", None)) {
            return *p;
        }
        match item {
            Item::RealServer(v, _) => self.item(Item::VirtualServer(v)),
            Item::Check(v, r) => self.item(Item::RealServer(v, r)),
            _ => Pos { line: 1, col: 1 },
        }
    }

    /// Position of `key`'s value, else of the item.
    pub fn key(&self, item: Item, key: &'static str) -> Pos {
        self.at.get(&(item, key, None)).copied().unwrap_or_else(|| self.item(item))
    }

    /// Position of element `idx` of list `key`, else of the list, else of the item.
    pub fn elem(&self, item: Item, key: &'static str, idx: usize) -> Pos {
        self.at.get(&(item, key, Some(idx))).copied().unwrap_or_else(|| self.key(item, key))
    }

    pub fn error(&self, pos: Pos, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_one_per_line_as_file_line_col() {
        let map = SourceMap::new(Path::new("ha-lb.toml"));
        let errors = ConfigErrors {
            errors: vec![
                map.error(Pos { line: 12, col: 19 }, "first"),
                map.error(Pos { line: 13, col: 1 }, "second"),
            ],
        };
        assert_eq!(errors.to_string(), "ha-lb.toml:12:19: first\nha-lb.toml:13:1: second");
    }

    #[test]
    fn positions_fall_back_from_element_to_key_to_item_to_parent() {
        let mut map = SourceMap::new(Path::new("f"));
        let vs = Item::VirtualServer(0);
        let rs = Item::RealServer(0, 1);
        map.set_item(vs, Pos { line: 10, col: 1 });
        assert_eq!(map.item(Item::Check(0, 1)), Pos { line: 10, col: 1 });
        map.set_item(rs, Pos { line: 20, col: 1 });
        map.set_key(rs, "port", Pos { line: 22, col: 8 });
        map.set_elem(rs, "port", 0, Pos { line: 22, col: 9 });
        assert_eq!(map.key(rs, "weight"), Pos { line: 20, col: 1 });
        assert_eq!(map.elem(rs, "port", 3), Pos { line: 22, col: 8 });
        assert_eq!(map.elem(rs, "port", 0), Pos { line: 22, col: 9 });
        assert_eq!(map.item(Item::VrrpInstance(7)), Pos { line: 1, col: 1 });
    }
}
