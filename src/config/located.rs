//! A format-neutral value tree that remembers where every value and key came from.
//!
//! JSON(C), YAML and TOML are all parsed into [`Node`]s. The rest of the loader works
//! on this one shape: it converts nodes to `serde_json::Value` for schema validation
//! and deserialization, and maps a JSON pointer from a validation error back to a
//! `line:col` in the source. Parsing is pure: text in, tree (or a located error) out.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::diagnostic::Snippet;
use super::manager::Limits;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(line: usize, col: usize) -> Self {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Pos {
            line: clamp(line),
            col: clamp(col),
        }
    }
}

/// A parsed value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One key of a mapping, with the position of the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A syntax error, already located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    pub(crate) fn new(pos: Pos, kind: NodeKind) -> Self {
        Node { pos, kind }
    }

    /// The entry for `key` when this node is a mapping.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The value for `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entries(&self) -> &[Entry] {
        match &self.kind {
            NodeKind::Map(entries) => entries,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "boolean",
            NodeKind::Int(_) | NodeKind::Float(_) => "number",
            NodeKind::Str(_) => "string",
            NodeKind::Seq(_) => "array",
            NodeKind::Map(_) => "object",
        }
    }

    /// Converts the tree to JSON. Keys keep their source order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                Value::Object(entries.iter().map(|e| (e.key.clone(), e.value.to_json())).collect())
            }
        }
    }

    /// The position a JSON pointer (RFC 6901, relative to this node) refers to.
    ///
    /// When the pointer ends at a mapping key the key's position is returned, since
    /// that is where a reader looks. A pointer that leaves the tree resolves to the
    /// deepest node it reached.
    pub fn locate(&self, pointer: &str) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for raw in pointer.split('/').skip(1) {
            let segment = unescape_pointer(raw);
            match &node.kind {
                NodeKind::Map(entries) => match entries.iter().find(|e| e.key == segment) {
                    Some(entry) => {
                        pos = entry.key_pos;
                        node = &entry.value;
                    }
                    None => return pos,
                },
                NodeKind::Seq(items) => match segment.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(item) => {
                        pos = item.pos;
                        node = item;
                    }
                    None => return pos,
                },
                _ => return pos,
            }
        }
        pos
    }
}

fn unescape_pointer(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Maps byte offsets to 1-based line/column (columns count characters), and
/// back, in constant time for ASCII lines and logarithmic time for others: a
/// minified file is one long line, and counting characters from its start for
/// every value would be quadratic.
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
    /// Per line: whether it is all ASCII (a column is then a byte offset).
    ascii: Vec<bool>,
    /// Per non-ASCII line, built on first use: the byte offset of every
    /// `CHECKPOINT`th character.
    checkpoints: RefCell<HashMap<usize, Vec<usize>>>,
}

const CHECKPOINT: usize = 64;

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let ascii = (0..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).copied().unwrap_or(text.len());
                text.as_bytes()[starts[i]..end].is_ascii()
            })
            .collect();
        LineIndex {
            text,
            starts,
            ascii,
            checkpoints: RefCell::new(HashMap::new()),
        }
    }

    fn line_range(&self, i: usize) -> (usize, usize) {
        let start = self.starts[i];
        let end = self.starts.get(i + 1).map_or(self.text.len(), |e| e - 1);
        (start, end)
    }

    /// The text of a 1-based line, without its line break.
    pub fn line_text(&self, line: u32) -> Option<&'a str> {
        let i = (line as usize).checked_sub(1)?;
        let start = *self.starts.get(i)?;
        if start == self.text.len() && i > 0 {
            // Past the final line break there is no line (as with `str::lines`).
            return None;
        }
        let (_, end) = self.line_range(i);
        self.text.get(start..end).map(|l| l.trim_end_matches('\r'))
    }

    /// Runs `f` with the checkpoints of non-ASCII line `i`.
    fn with_checkpoints<T>(&self, i: usize, f: impl FnOnce(&[usize]) -> T) -> T {
        let mut cache = self.checkpoints.borrow_mut();
        let points = cache.entry(i).or_insert_with(|| {
            let (start, end) = self.line_range(i);
            self.text[start..end]
                .char_indices()
                .step_by(CHECKPOINT)
                .map(|(b, _)| start + b)
                .collect()
        });
        f(points)
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = self.starts[line];
        if self.ascii[line] || !self.text.is_char_boundary(offset) {
            return Pos::new(line + 1, offset - start + 1);
        }
        let col = self.with_checkpoints(line, |points| {
            let k = points.partition_point(|&p| p <= offset).saturating_sub(1);
            let from = points.get(k).copied().unwrap_or(start);
            k * CHECKPOINT + self.text[from..offset].chars().count()
        });
        Pos::new(line + 1, col + 1)
    }

    /// The byte offset of a 1-based position (clamped to its line).
    fn offset(&self, pos: Pos) -> Option<usize> {
        let i = (pos.line as usize).checked_sub(1).filter(|&i| i < self.starts.len())?;
        let (start, end) = self.line_range(i);
        let col = (pos.col.max(1) - 1) as usize;
        if self.ascii[i] {
            return Some((start + col).min(end));
        }
        Some(self.with_checkpoints(i, |points| {
            let from = points.get(col / CHECKPOINT).copied().unwrap_or(end);
            self.text[from..end]
                .char_indices()
                .nth(col % CHECKPOINT)
                .map_or(end, |(b, _)| from + b)
        }))
    }

    /// The line of `pos` for a diagnostic: a window around the column when it is long.
    pub fn snippet(&self, pos: Pos) -> Option<Snippet> {
        let line = self.line_text(pos.line)?;
        if line.len() <= Snippet::LONG {
            return Some(Snippet::new(line, pos.col));
        }
        let start = self.starts[(pos.line - 1) as usize];
        let at = self.offset(pos)? - start;
        Some(Snippet::around(line, at))
    }
}

// ---------------------------------------------------------------------------------
// JSON and JSONC (comments and trailing commas, as VS Code and Cursor write them).

/// Parses JSON, tolerating comments and trailing commas (see [`super::json`]).
pub fn parse_json(text: &str, limits: &Limits) -> Result<Node, ParseError> {
    super::json::parse(text, limits.max_nesting)
}

pub(crate) fn number_node(text: &str, pos: Pos) -> Option<Node> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Node::new(pos, NodeKind::Int(i)));
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(|f| Node::new(pos, NodeKind::Float(f)))
}

// ---------------------------------------------------------------------------------
// YAML (one document; anchors, aliases and `<<` merge keys supported).

/// Parses a single YAML document, within `limits` (nesting, alias uses and what
/// aliases may add): a "billion laughs" file is an error, not gigabytes.
pub fn parse_yaml(text: &str, limits: &Limits) -> Result<Node, ParseError> {
    let mut builder = YamlBuilder::new(limits);
    let mut parser = Parser::new_from_str(text);
    // Events are pulled one at a time (not `Parser::load`, which recurses per
    // nesting level), so deep input cannot overflow the stack and the first
    // error stops the work.
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => {
                builder.on_event(event, mark);
                if builder.error.is_some() {
                    break;
                }
            }
            Err(e) => return Err(yaml_syntax_error(text, &e)),
        }
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    match builder.documents.len() {
        0 => Ok(Node::new(Pos::new(1, 1), NodeKind::Null)),
        1 => Ok(builder.documents.remove(0)),
        _ => Err(ParseError {
            pos: builder.second_doc_pos.unwrap_or_default(),
            message: "a config file holds one YAML document; split the others into their own files".into(),
        }),
    }
}

fn yaml_pos(marker: &Marker) -> Pos {
    // yaml-rust2 reports 1-based lines and 0-based columns.
    Pos::new(marker.line(), marker.col() + 1)
}

/// A scanner error, pointed at its cause when that is an unclosed `[` or `{`
/// (the scanner notices only lines later, as "invalid indentation" or the like).
fn yaml_syntax_error(text: &str, e: &yaml_rust2::ScanError) -> ParseError {
    let at = yaml_pos(e.marker());
    if let Some((pos, bracket)) = unclosed_flow_bracket(text)
        && pos <= at
    {
        let closer = if bracket == '[' { ']' } else { '}' };
        return ParseError {
            pos,
            message: format!(
                "invalid YAML: this `{bracket}` is never closed with `{closer}` (the parser stopped at {}:{}: {})",
                at.line,
                at.col,
                e.info()
            ),
        };
    }
    ParseError {
        pos: at,
        message: format!("invalid YAML: {}", e.info()),
    }
}

/// The first flow bracket (`[` or `{` starting a node) that is never closed,
/// found by a light scan that skips comments and quoted text.
fn unclosed_flow_bracket(text: &str) -> Option<(Pos, char)> {
    let mut open: Vec<(Pos, char)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        // The previous significant character on this line (`\n` at its start),
        // and the previous character of any kind.
        let mut prev = '\n';
        let mut prev_raw = '\n';
        let mut chars = line.chars().enumerate().peekable();
        while let Some((col, c)) = chars.next() {
            let raw = std::mem::replace(&mut prev_raw, c);
            if let Some(q) = quote {
                if c == q {
                    if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                        chars.next();
                    } else {
                        quote = None;
                        prev = c;
                    }
                } else if c == '\\' && q == '"' {
                    chars.next();
                }
                continue;
            }
            let starts_node = matches!(prev, '\n' | ':' | '-' | ',' | '[' | '{' | '?') || !open.is_empty();
            match c {
                ' ' | '\t' => continue,
                '#' if matches!(raw, '\n' | ' ' | '\t') => break,
                '"' | '\'' if starts_node => quote = Some(c),
                '[' | '{' if starts_node => open.push((Pos::new(n + 1, col + 1), c)),
                ']' | '}' if !open.is_empty() => {
                    open.pop();
                }
                _ => {}
            }
            prev = c;
        }
    }
    open.first().copied()
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
        cost: u64,
    },
    Map {
        node: Node,
        anchor: usize,
        cost: u64,
        pending_key: Option<(String, Pos)>,
        keys: HashSet<String>,
    },
}

const ALIAS_LIMIT: &str = "anchors and aliases expand this file beyond the limit of what they may add (manager.limits.max_yaml_alias_bytes); is it a \"billion laughs\" file?";

/// What a value costs in memory, roughly: its text plus a fixed overhead per value.
const VALUE_COST: u64 = 64;

struct YamlBuilder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    /// Anchored values and what each costs, to charge every alias use.
    anchors: HashMap<usize, (Node, u64)>,
    error: Option<ParseError>,
    second_doc_pos: Option<Pos>,
    max_depth: usize,
    aliases_left: usize,
    alias_bytes_left: u64,
}

impl YamlBuilder {
    fn new(limits: &Limits) -> Self {
        YamlBuilder {
            stack: Vec::new(),
            documents: Vec::new(),
            anchors: HashMap::new(),
            error: None,
            second_doc_pos: None,
            max_depth: limits.max_nesting,
            aliases_left: limits.max_yaml_aliases,
            alias_bytes_left: limits.max_yaml_alias_bytes,
        }
    }

    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some(ParseError { pos, message });
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos) {
        if self.stack.len() >= self.max_depth {
            let limit = self.max_depth;
            self.fail(
                pos,
                format!("mappings and sequences nest deeper than {limit} levels here (manager.limits.max_nesting)"),
            );
            return;
        }
        self.stack.push(frame);
    }

    /// Attaches a finished node (costing `cost`) to its parent, or finishes the document.
    fn push_value(&mut self, node: Node, anchor: usize, cost: u64) {
        if anchor > 0 {
            // Keeping an anchored value is a copy too: anchors nested in anchors
            // would otherwise copy the innermost content once per level.
            if cost > self.alias_bytes_left {
                self.fail(node.pos, ALIAS_LIMIT.into());
                return;
            }
            self.alias_bytes_left -= cost;
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        match self.stack.last_mut() {
            None => {
                if self.documents.len() == 1 && self.second_doc_pos.is_none() {
                    self.second_doc_pos = Some(node.pos);
                }
                self.documents.push(node);
            }
            Some(Frame::Seq {
                node: seq, cost: total, ..
            }) => {
                *total += cost;
                if let NodeKind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Frame::Map {
                pending_key,
                cost: total,
                ..
            }) => {
                *total += cost;
                match pending_key.take() {
                    None => {
                        let key = match &node.kind {
                            NodeKind::Str(s) => s.clone(),
                            NodeKind::Int(i) => i.to_string(),
                            NodeKind::Float(f) => f.to_string(),
                            NodeKind::Bool(b) => b.to_string(),
                            NodeKind::Null => "null".to_string(),
                            NodeKind::Seq(_) | NodeKind::Map(_) => {
                                let pos = node.pos;
                                self.fail(pos, "mapping keys must be plain strings".into());
                                String::new()
                            }
                        };
                        if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut() {
                            *pending_key = Some((key, node.pos));
                        }
                    }
                    Some((key, key_pos)) => {
                        let mut duplicate = None;
                        if let Some(Frame::Map { node: map, keys, .. }) = self.stack.last_mut()
                            && let NodeKind::Map(entries) = &mut map.kind
                        {
                            if key != "<<" && !keys.insert(key.clone()) {
                                duplicate = Some(key_pos);
                            }
                            entries.push(Entry {
                                key: key.clone(),
                                key_pos,
                                value: node,
                            });
                        }
                        if let Some(pos) = duplicate {
                            self.fail(pos, format!("duplicate key `{key}`"));
                        }
                    }
                }
            }
        }
    }

    fn alias(&mut self, id: usize, pos: Pos) {
        let Some((node, cost)) = self.anchors.get(&id) else {
            self.fail(pos, "alias refers to an unknown anchor".into());
            return;
        };
        if self.aliases_left == 0 {
            self.fail(
                pos,
                "too many aliases (`*name`) in one file (manager.limits.max_yaml_aliases)".into(),
            );
            return;
        }
        if *cost > self.alias_bytes_left {
            self.fail(pos, ALIAS_LIMIT.into());
            return;
        }
        self.aliases_left -= 1;
        self.alias_bytes_left -= cost;
        let (mut node, cost) = (node.clone(), *cost);
        node.pos = pos;
        self.push_value(node, 0, cost);
    }
}

/// Applies YAML merge keys (`<<: *defaults`): merged entries never override explicit ones.
fn apply_merge_keys(entries: Vec<Entry>) -> Vec<Entry> {
    if !entries.iter().any(|e| e.key == "<<") {
        return entries;
    }
    let (merges, mut own): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.key == "<<");
    let mut present: HashSet<String> = own.iter().map(|e| e.key.clone()).collect();
    for merge in merges {
        let sources: Vec<Node> = match merge.value.kind {
            NodeKind::Map(_) => vec![merge.value],
            NodeKind::Seq(items) => items,
            _ => Vec::new(),
        };
        for source in sources {
            if let NodeKind::Map(inherited) = source.kind {
                for entry in inherited {
                    if present.insert(entry.key.clone()) {
                        own.push(entry);
                    }
                }
            }
        }
    }
    own
}

fn yaml_scalar(value: String, style: TScalarStyle, tag: Option<&yaml_rust2::parser::Tag>) -> NodeKind {
    let explicit_str = tag.is_some_and(|t| t.suffix == "str");
    if style != TScalarStyle::Plain || explicit_str {
        return NodeKind::Str(value);
    }
    match value.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        _ => {}
    }
    let first = value.as_bytes()[0];
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        if let Ok(i) = value.parse::<i64>() {
            return NodeKind::Int(i);
        }
        if let Some(hex) = value.strip_prefix("0x")
            && let Ok(i) = i64::from_str_radix(hex, 16)
        {
            return NodeKind::Int(i);
        }
        if let Some(oct) = value.strip_prefix("0o")
            && let Ok(i) = i64::from_str_radix(oct, 8)
        {
            return NodeKind::Int(i);
        }
        if value.chars().any(|c| c.is_ascii_digit())
            && let Ok(f) = value.parse::<f64>()
            && f.is_finite()
        {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str(value)
}

impl MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = yaml_pos(&mark);
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                let cost = VALUE_COST + value.len() as u64;
                let kind = yaml_scalar(value, style, tag.as_ref());
                self.push_value(Node::new(pos, kind), anchor, cost);
            }
            Event::SequenceStart(anchor, _) => self.open(
                Frame::Seq {
                    node: Node::new(pos, NodeKind::Seq(Vec::new())),
                    anchor,
                    cost: VALUE_COST,
                },
                pos,
            ),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { node, anchor, cost }) = self.stack.pop() {
                    self.push_value(node, anchor, cost);
                }
            }
            Event::MappingStart(anchor, _) => self.open(
                Frame::Map {
                    node: Node::new(pos, NodeKind::Map(Vec::new())),
                    anchor,
                    cost: VALUE_COST,
                    pending_key: None,
                    keys: HashSet::new(),
                },
                pos,
            ),
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut node, anchor, cost, ..
                }) = self.stack.pop()
                {
                    if let NodeKind::Map(entries) = node.kind {
                        node.kind = NodeKind::Map(apply_merge_keys(entries));
                    }
                    self.push_value(node, anchor, cost);
                }
            }
            Event::Alias(id) => self.alias(id, pos),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// TOML.

/// Parses a TOML document; tables and arrays may nest `limits.max_nesting` levels.
pub fn parse_toml(text: &str, limits: &Limits) -> Result<Node, ParseError> {
    use toml::de::{DeTable, DeValue};
    let index = LineIndex::new(text);
    let table = DeTable::parse(text).map_err(|e| ParseError {
        pos: index.pos(e.span().map_or(0, |s| s.start)),
        message: format!("invalid TOML: {}", e.message().trim_end()),
    })?;

    fn convert(value: &DeValue<'_>, pos: Pos, index: &LineIndex<'_>, depth: usize) -> Result<Node, ParseError> {
        if depth == 0 && matches!(value, DeValue::Array(_) | DeValue::Table(_)) {
            return Err(ParseError {
                pos,
                message: "tables and arrays nest too deep here (manager.limits.max_nesting)".into(),
            });
        }
        let kind = match value {
            DeValue::String(s) => NodeKind::Str(s.to_string()),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let parsed = i64::from_str_radix(digits.trim_start_matches('+'), i.radix());
                NodeKind::Int(parsed.map_err(|_| ParseError {
                    pos,
                    message: format!("integer `{}` is out of range", i.as_str()),
                })?)
            }
            DeValue::Float(f) => {
                let parsed = f
                    .as_str()
                    .replace('_', "")
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite());
                NodeKind::Float(parsed.ok_or_else(|| ParseError {
                    pos,
                    message: format!("unsupported float `{}`", f.as_str()),
                })?)
            }
            DeValue::Boolean(b) => NodeKind::Bool(*b),
            DeValue::Datetime(d) => NodeKind::Str(d.to_string()),
            DeValue::Array(items) => NodeKind::Seq(
                items
                    .iter()
                    .map(|item| convert(item.get_ref(), index.pos(item.span().start), index, depth - 1))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(table) => {
                let mut entries: Vec<Entry> = table
                    .iter()
                    .map(|(k, v)| {
                        Ok(Entry {
                            key: k.get_ref().to_string(),
                            key_pos: index.pos(k.span().start),
                            value: convert(v.get_ref(), index.pos(v.span().start), index, depth - 1)?,
                        })
                    })
                    .collect::<Result<_, ParseError>>()?;
                entries.sort_by_key(|e| e.key_pos);
                NodeKind::Map(entries)
            }
        };
        Ok(Node::new(pos, kind))
    }
    let root = DeValue::Table(table.into_inner());
    convert(&root, Pos::new(1, 1), &index, limits.max_nesting + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_positions_point_at_keys_and_values() {
        let text = "{\n  // a comment\n  \"a\": {\"b\": [1, 2.5, \"x\"]},\n}\n";
        let node = parse_json(text, &Limits::default()).unwrap();
        assert_eq!(node.locate("/a"), Pos::new(3, 3));
        assert_eq!(node.locate("/a/b"), Pos::new(3, 9));
        assert_eq!(node.locate("/a/b/2"), Pos::new(3, 23));
        assert_eq!(node.to_json(), serde_json::json!({"a": {"b": [1, 2.5, "x"]}}));
    }

    #[test]
    fn json_errors_are_located() {
        let err = parse_json("{\n  \"a\": 1\n  \"b\": 2\n}", &Limits::default()).unwrap_err();
        assert_eq!(err.pos.line, 2, "{err:?}");
        let dup = parse_json("{\"a\": 1, \"a\": 2}", &Limits::default()).unwrap_err();
        assert!(dup.message.contains("duplicate key `a`"), "{}", dup.message);
    }

    #[test]
    fn yaml_types_positions_and_merge_keys() {
        let text = "defaults: &d\n  retries: 3\n  mode: prod\nservers:\n  a:\n    <<: *d\n    mode: dev\n    port: 8080\n    ratio: 0.5\n    quoted: \"123\"\n    empty:\n";
        let node = parse_yaml(text, &Limits::default()).unwrap();
        let a = node.get("servers").unwrap().get("a").unwrap();
        assert_eq!(
            a.to_json(),
            serde_json::json!({"mode": "dev", "port": 8080, "ratio": 0.5, "quoted": "123", "empty": null, "retries": 3})
        );
        assert_eq!(node.locate("/servers/a/port"), Pos::new(8, 5));
    }

    #[test]
    fn yaml_errors_are_located() {
        let err = parse_yaml("servers:\n  a: [1, 2\n", &Limits::default()).unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        let dup = parse_yaml("a: 1\nb: 2\na: 3\n", &Limits::default()).unwrap_err();
        assert_eq!(dup.pos, Pos::new(3, 1));
        let multi = parse_yaml("a: 1\n---\nb: 2\n", &Limits::default()).unwrap_err();
        assert!(multi.message.contains("one YAML document"));
    }

    #[test]
    fn toml_positions() {
        let text = "[project]\nname = \"x\"\n\n[tool.mcp.servers.web]\ncommand = \"node\"\nport = 3_000\n";
        let node = parse_toml(text, &Limits::default()).unwrap();
        assert_eq!(node.locate("/tool/mcp/servers/web/port"), Pos::new(6, 1));
        assert_eq!(
            node.get("tool").unwrap().to_json(),
            serde_json::json!({"mcp": {"servers": {"web": {"command": "node", "port": 3000}}}})
        );
        let err = parse_toml("a = \n", &Limits::default()).unwrap_err();
        assert_eq!(err.pos.line, 1);
    }

    #[test]
    fn line_index_counts_characters() {
        let index = LineIndex::new("é: x\nab");
        assert_eq!(index.pos(3), Pos::new(1, 3));
        assert_eq!(index.pos(7), Pos::new(2, 2));
        // A long non-ASCII line goes through the checkpoints, both ways.
        let line = "é".repeat(1000) + "X" + &"ü".repeat(1000);
        let index = LineIndex::new(&line);
        let x = line.find('X').unwrap();
        assert_eq!(index.pos(x), Pos::new(1, 1001));
        assert_eq!(index.offset(Pos::new(1, 1001)), Some(x));
        let s = index.snippet(Pos::new(1, 1001)).unwrap();
        assert_eq!(s.text.chars().nth(s.caret as usize - 1), Some('X'));
        assert!(s.text.chars().count() < 200);
    }
}
