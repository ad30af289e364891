//! A JSONC parser (comments and trailing commas, as VS Code and Cursor write them)
//! that builds the located [`Node`] tree directly.
//!
//! Why not a general-purpose parser: config files come from other people's repos,
//! so the parser must cost time and memory linear in the input, refuse nesting
//! deeper than a limit instead of overflowing the stack, and point every error at
//! its cause — an unclosed bracket at the bracket, a missing comma after the value
//! it should follow. Positions are tracked while scanning, so no offset is ever
//! converted back to a line by searching. Pure: text in, tree or error out.

use std::collections::HashSet;

use super::located::{Entry, Node, NodeKind, ParseError, Pos};

/// Parses JSON with comments and trailing commas; objects and arrays may nest at
/// most `max_depth` levels.
pub fn parse(text: &str, max_depth: usize) -> Result<Node, ParseError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        i: 0,
        line: 1,
        col: 1,
        max_depth,
        open: Vec::new(),
        misaligned: None,
        line_start: 0,
        line_indent: None,
    };
    p.skip_trivia()?;
    if p.i == p.bytes.len() {
        return Err(ParseError {
            pos: Pos::new(1, 1),
            message: "the file is empty".into(),
        });
    }
    let root = p.value()?;
    p.skip_trivia()?;
    if p.i < p.bytes.len() {
        return Err(p.error_here("unexpected text after the end of the JSON value".into()));
    }
    Ok(root)
}

/// An open `{` or `[`, for pointing at it when it is never closed.
struct Open {
    bracket: u8,
    pos: Pos,
    indent: usize,
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    i: usize,
    line: usize,
    /// Column in characters, 1-based.
    col: usize,
    max_depth: usize,
    open: Vec<Open>,
    /// The first bracket whose closing bracket sat at a different indentation:
    /// when the file ends with brackets open, the likely unclosed one.
    misaligned: Option<Pos>,
    /// Byte offset where the current line starts.
    line_start: usize,
    /// Indentation of the current line, once something other than blanks was passed.
    line_indent: Option<usize>,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos::new(self.line, self.col)
    }

    fn error_here(&self, message: String) -> ParseError {
        ParseError {
            pos: self.pos(),
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    /// Moves past one byte, keeping line and column current.
    fn bump(&mut self) {
        let Some(&b) = self.bytes.get(self.i) else { return };
        if self.line_indent.is_none() && !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            self.line_indent = Some(self.i - self.line_start);
        }
        self.i += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
            self.line_start = self.i;
            self.line_indent = None;
        } else if b & 0xC0 != 0x80 {
            // Not a UTF-8 continuation byte: a new character starts.
            self.col += 1;
        }
    }

    /// Indentation (leading spaces and tabs) of the line the cursor is on, in bytes.
    fn indent_of_line(&self) -> usize {
        self.line_indent.unwrap_or(self.i - self.line_start)
    }

    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.bump(),
                Some(0xEF) if self.i == 0 && self.bytes.starts_with(b"\xEF\xBB\xBF") => {
                    // A byte-order mark: one character, as `LineIndex` counts it.
                    self.i += 3;
                    self.col += 1;
                }
                Some(b'/') if self.bytes.get(self.i + 1) == Some(&b'/') => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.bump();
                    }
                }
                Some(b'/') if self.bytes.get(self.i + 1) == Some(&b'*') => {
                    let start = self.pos();
                    self.bump();
                    self.bump();
                    loop {
                        match self.peek() {
                            None => {
                                return Err(ParseError {
                                    pos: start,
                                    message: "this `/*` comment is never closed with `*/`".into(),
                                });
                            }
                            Some(b'*') if self.bytes.get(self.i + 1) == Some(&b'/') => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            Some(_) => self.bump(),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The error for the end of the file inside an object or array.
    fn unexpected_end(&self) -> ParseError {
        let count = self.open.len();
        let open = if count == 1 {
            "1 bracket".to_string()
        } else {
            format!("{count} brackets")
        };
        if let Some(pos) = self.misaligned
            && let Some(what) = bracket_at(self.text, pos)
        {
            // A guess from indentation: the closers after it sit one level off.
            let closer = if what == '[' { ']' } else { '}' };
            return ParseError {
                pos,
                message: format!(
                    "this `{what}` is probably never closed: the closing brackets after it are indented one level off, and the file ends with {open} open (a `{closer}` is missing)"
                ),
            };
        }
        let (pos, what) = self
            .open
            .last()
            .map_or((self.pos(), '{'), |o| (o.pos, o.bracket as char));
        let closer = if what == '[' { ']' } else { '}' };
        ParseError {
            pos,
            message: format!("this `{what}` is never closed: the file ends ({open} still open) before its `{closer}`"),
        }
    }

    fn value(&mut self) -> Result<Node, ParseError> {
        let pos = self.pos();
        match self.peek() {
            None => Err(self.unexpected_end()),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Node::new(pos, NodeKind::Str(self.string()?))),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", NodeKind::Bool(true)),
            Some(b'f') => self.literal("false", NodeKind::Bool(false)),
            Some(b'n') => self.literal("null", NodeKind::Null),
            Some(b'\'') => Err(self.error_here("strings take double quotes in JSON, not single quotes".into())),
            Some(b'}' | b']') => Err(self.error_here(format!(
                "expected a value, found `{}`",
                self.peek().map_or(' ', char::from)
            ))),
            Some(_) => {
                Err(self.error_here("expected a value (a string, number, object, array, true, false or null)".into()))
            }
        }
    }

    fn literal(&mut self, word: &str, kind: NodeKind) -> Result<Node, ParseError> {
        let pos = self.pos();
        if self.bytes[self.i..].starts_with(word.as_bytes())
            && !self
                .bytes
                .get(self.i + word.len())
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            for _ in 0..word.len() {
                self.bump();
            }
            return Ok(Node::new(pos, kind));
        }
        Err(self.error_here("expected a value; words other than true, false and null need double quotes".into()))
    }

    fn number(&mut self) -> Result<Node, ParseError> {
        let pos = self.pos();
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.bump();
            }
            p.i - from
        };
        if self.peek() == Some(b'-') {
            self.bump();
        }
        let int_start = self.i;
        let int_digits = digits(self);
        let bad = |p: &Self| ParseError {
            pos,
            message: format!(
                "invalid number `{}`",
                p.text[start..p.i.max(start + 1).min(p.text.len())]
                    .chars()
                    .take(40)
                    .collect::<String>()
            ),
        };
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return Err(bad(self));
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if digits(self) == 0 {
                return Err(bad(self));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(bad(self));
            }
        }
        super::located::number_node(&self.text[start..self.i], pos).ok_or_else(|| bad(self))
    }

    /// A string literal; the cursor is on the opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        let start_pos = self.pos();
        self.bump();
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go.
            let run_start = self.i;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.bump();
            }
            out.push_str(&self.text[run_start..self.i]);
            match self.peek() {
                None => {
                    return Err(ParseError {
                        pos: start_pos,
                        message: "this string is never closed: the file ends before its closing `\"`".into(),
                    });
                }
                Some(b'"') => {
                    self.bump();
                    return Ok(out);
                }
                Some(b'\n' | b'\r') => {
                    return Err(ParseError {
                        pos: start_pos,
                        message: "this string is not closed before the end of its line".into(),
                    });
                }
                Some(b'\\') => {
                    let escape_pos = self.pos();
                    self.bump();
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.bump();
                            let c = self.unicode_escape(escape_pos)?;
                            out.push(c);
                            continue;
                        }
                        _ => {
                            return Err(ParseError {
                                pos: escape_pos,
                                message: "invalid escape: use \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX".into(),
                            });
                        }
                    };
                    self.bump();
                    out.push(c);
                }
                Some(_) => {
                    return Err(self.error_here("control characters must be escaped inside strings".into()));
                }
            }
        }
    }

    fn hex4(&mut self, escape_pos: Pos) -> Result<u32, ParseError> {
        let hex = self
            .bytes
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) if hex.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) => {
                for _ in 0..4 {
                    self.bump();
                }
                Ok(v)
            }
            _ => Err(ParseError {
                pos: escape_pos,
                message: "`\\u` must be followed by four hex digits".into(),
            }),
        }
    }

    /// After `\u`: four hex digits, and a second escape for a surrogate pair.
    fn unicode_escape(&mut self, escape_pos: Pos) -> Result<char, ParseError> {
        let first = self.hex4(escape_pos)?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if self.bytes[self.i..].starts_with(b"\\u") {
                self.bump();
                self.bump();
                let second = self.hex4(escape_pos)?;
                if !(0xDC00..0xE000).contains(&second) {
                    return Err(ParseError {
                        pos: escape_pos,
                        message: "a \\u surrogate pair is incomplete".into(),
                    });
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            } else {
                return Err(ParseError {
                    pos: escape_pos,
                    message: "a \\u surrogate pair is incomplete".into(),
                });
            }
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| ParseError {
            pos: escape_pos,
            message: "this \\u escape is not a valid character".into(),
        })
    }

    /// Enters `{` or `[`; the cursor is on it.
    fn enter(&mut self) -> Result<Pos, ParseError> {
        let pos = self.pos();
        if self.open.len() >= self.max_depth {
            return Err(ParseError {
                pos,
                message: format!(
                    "objects and arrays nest deeper than {} levels here (manager.limits.max_nesting)",
                    self.max_depth
                ),
            });
        }
        let bracket = self.bytes[self.i];
        let indent = self.indent_of_line();
        self.open.push(Open { bracket, pos, indent });
        self.bump();
        Ok(pos)
    }

    /// Leaves the innermost `{` or `[`; the cursor is on its closing bracket.
    fn leave(&mut self) {
        if let Some(open) = self.open.pop()
            && self.misaligned.is_none()
            && open.pos.line as usize != self.line
            && self.indent_of_line() != open.indent
            && self.line_starts_with_closer()
        {
            self.misaligned = Some(open.pos);
        }
        self.bump();
    }

    /// Whether the closing bracket under the cursor is the first thing on its line.
    fn line_starts_with_closer(&self) -> bool {
        self.line_indent.is_none()
    }

    /// After a value inside `{`/`[`: a `,` or the closing bracket.
    fn separator(&mut self, closer: u8, value_end: Pos) -> Result<bool, ParseError> {
        self.skip_trivia()?;
        match self.peek() {
            Some(b',') => {
                self.bump();
                Ok(true)
            }
            Some(b) if b == closer => Ok(false),
            None => Err(self.unexpected_end()),
            Some(b @ (b'}' | b']')) => {
                let open = self.open.last().map(|o| (o.bracket as char, o.pos));
                let (bracket, at) = open.unwrap_or(('{', Pos::default()));
                Err(self.error_here(format!(
                    "found `{}` but the `{bracket}` at {}:{} is still open; expected `{}`",
                    b as char, at.line, at.col, closer as char
                )))
            }
            Some(_) => Err(ParseError {
                pos: value_end,
                message: format!(
                    "expected `,` or `{}` after this value (is a `,` missing before line {}?)",
                    closer as char, self.line
                ),
            }),
        }
    }

    fn object(&mut self) -> Result<Node, ParseError> {
        let pos = self.enter()?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut keys: HashSet<String> = HashSet::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b'}') => break,
                None => return Err(self.unexpected_end()),
                Some(b'"') => {}
                Some(_) => {
                    return Err(self.error_here("expected a key in double quotes, or `}`".into()));
                }
            }
            let key_pos = self.pos();
            let key = self.string()?;
            self.skip_trivia()?;
            match self.peek() {
                Some(b':') => self.bump(),
                None => return Err(self.unexpected_end()),
                Some(_) => return Err(self.error_here("expected `:` after the key".into())),
            }
            self.skip_trivia()?;
            let value = self.value()?;
            let value_end = self.pos();
            if !keys.insert(key.clone()) {
                return Err(ParseError {
                    pos: key_pos,
                    message: format!("duplicate key `{key}`"),
                });
            }
            entries.push(Entry { key, key_pos, value });
            if !self.separator(b'}', value_end)? {
                break;
            }
        }
        self.leave();
        Ok(Node::new(pos, NodeKind::Map(entries)))
    }

    fn array(&mut self) -> Result<Node, ParseError> {
        let pos = self.enter()?;
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b']') => break,
                None => return Err(self.unexpected_end()),
                Some(_) => {}
            }
            items.push(self.value()?);
            let value_end = self.pos();
            if !self.separator(b']', value_end)? {
                break;
            }
        }
        self.leave();
        Ok(Node::new(pos, NodeKind::Seq(items)))
    }
}

/// The bracket character at a position, if the text has one there.
fn bracket_at(text: &str, pos: Pos) -> Option<char> {
    let line = text.lines().nth((pos.line as usize).checked_sub(1)?)?;
    line.chars()
        .nth((pos.col as usize).checked_sub(1)?)
        .filter(|c| matches!(c, '{' | '['))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ParseError {
        parse(text, 64).unwrap_err()
    }

    #[test]
    fn values_comments_and_trailing_commas() {
        let text = "\u{feff}{\n  // c\n  \"a\": [1, -2.5e1, \"x\\u00e9\\ud83d\\ude00\", true, null,],\n  /* b */ \"b\": {},\n}\n";
        let node = parse(text, 64).unwrap();
        assert_eq!(
            node.to_json(),
            serde_json::json!({"a": [1, -25.0, "xé😀", true, null], "b": {}})
        );
        assert_eq!(node.locate("/a/2"), Pos::new(3, 20));
        assert_eq!(node.locate("/b"), Pos::new(4, 11));
    }

    #[test]
    fn columns_count_characters() {
        let node = parse("{\"é\": \"ü\", \"k\": 1}", 64).unwrap();
        assert_eq!(node.locate("/k"), Pos::new(1, 12));
    }

    #[test]
    fn unclosed_brackets_are_reported_at_the_bracket() {
        // The `{` of "b" lacks its `}`: the closers below are indented one level off.
        let text = "{\n  \"mcpServers\": {\n    \"a\": {\n      \"command\": \"x\"\n    },\n    \"b\": {\n      \"command\": \"y\"\n  }\n}\n";
        let e = err(text);
        assert_eq!(e.pos, Pos::new(6, 10), "{e:?}");
        assert!(e.message.contains("this `{` is probably never closed"), "{}", e.message);
        // Only the last `}` is missing: the outermost brace.
        let e = err("{\n  \"a\": {\n    \"b\": 1\n  }\n");
        assert_eq!(e.pos, Pos::new(1, 1));
        let e = err("{\"a\": [1, 2\n");
        assert_eq!(e.pos, Pos::new(1, 7));
        assert!(e.message.contains("this `[` is never closed"), "{}", e.message);
    }

    #[test]
    fn other_errors_point_at_the_cause() {
        let e = err("{\n  \"a\": 1\n  \"b\": 2\n}");
        assert_eq!(e.pos, Pos::new(2, 9), "{e:?}");
        assert!(e.message.contains("`,` missing"), "{}", e.message);
        let e = err("{\"a\": [1, 2}");
        assert_eq!(e.pos, Pos::new(1, 12));
        assert!(e.message.contains("the `[` at 1:7 is still open"), "{}", e.message);
        let e = err("{\n  \"a\": \"open\n}");
        assert_eq!(e.pos, Pos::new(2, 8));
        assert_eq!(err("{\"a\": 1, \"a\": 2}").message, "duplicate key `a`");
        assert_eq!(err("").message, "the file is empty");
        assert_eq!(err("{} x").pos, Pos::new(1, 4));
        assert_eq!(err("{\"a\": 01}").pos, Pos::new(1, 7));
        assert_eq!(err("{\"a\": tru}").pos, Pos::new(1, 7));
        assert_eq!(err("{/* x").pos, Pos::new(1, 2));
    }

    #[test]
    fn nesting_is_bounded_without_recursion_trouble() {
        let deep = "[".repeat(100_000);
        let e = parse(&deep, 64).unwrap_err();
        assert_eq!(e.pos, Pos::new(1, 65));
        assert!(e.message.contains("deeper than 64 levels"), "{}", e.message);
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&ok, 64).is_ok());
    }
}
