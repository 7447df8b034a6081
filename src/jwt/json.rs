//! A strict reader for the small JSON objects inside a JWT (RFC 8259): it validates the whole
//! document and returns the top-level members whose values the verifier needs (strings and
//! numbers). Nested values are validated and skipped. A duplicate member name is an error:
//! two `sub` claims read differently by two parsers is a classic token-confusion attack.

/// A top-level member value the verifier may read.
#[derive(Debug, PartialEq)]
pub(crate) enum Value {
    String(String),
    Number(f64),
    /// true, false, null, an object or an array.
    Other,
}

/// Nesting deeper than this is refused (a JWT's claims are flat; this bounds recursion).
const MAX_DEPTH: usize = 16;

/// The document is not a JSON object, or is malformed.
#[derive(Debug, PartialEq)]
pub(crate) struct Malformed;

/// Parses `input` as one JSON object and returns its members in order.
pub(crate) fn object_members(input: &[u8]) -> Result<Vec<(String, Value)>, Malformed> {
    let mut reader = Reader { input, pos: 0 };
    reader.skip_whitespace();
    let members = reader.object(0, true)?.unwrap_or_default();
    reader.skip_whitespace();
    if reader.pos != input.len() {
        return Err(Malformed);
    }
    Ok(members)
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, Malformed> {
        let byte = self.peek().ok_or(Malformed)?;
        self.pos += 1;
        Ok(byte)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.next()? == byte {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Malformed> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// An object; its members are collected only at the top level (`collect`).
    fn object(&mut self, depth: usize, collect: bool) -> Result<Option<Vec<(String, Value)>>, Malformed> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(collect.then_some(members));
        }
        loop {
            self.skip_whitespace();
            let name = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            if collect {
                if members.iter().any(|(existing, _)| *existing == name) {
                    return Err(Malformed);
                }
                members.push((name, value));
            }
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(collect.then_some(members)),
                _ => return Err(Malformed),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Malformed> {
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            self.value(depth + 1)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b']' => return Ok(()),
                _ => return Err(Malformed),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        match self.peek().ok_or(Malformed)? {
            b'"' => self.string().map(Value::String),
            b'{' => self.object(depth, false).map(|_| Value::Other),
            b'[' => self.array(depth).map(|_| Value::Other),
            b't' => self.literal(b"true").map(|_| Value::Other),
            b'f' => self.literal(b"false").map(|_| Value::Other),
            b'n' => self.literal(b"null").map(|_| Value::Other),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => Err(Malformed),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<f64, Malformed> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let leading_zero = self.peek() == Some(b'0');
        let integer_digits = self.digits();
        if integer_digits == 0 || (leading_zero && integer_digits > 1) {
            return Err(Malformed);
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        let text = std::str::from_utf8(&self.input[start..self.pos]).map_err(|_| Malformed)?;
        text.parse::<f64>().map_err(|_| Malformed)
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = char::from(self.next()?).to_digit(16).ok_or(Malformed)?;
            value = value * 16 + digit;
        }
        Ok(value)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).map_err(|_| Malformed),
                b'\\' => {
                    let unescaped = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.escaped_code_point()?,
                        _ => return Err(Malformed),
                    };
                    out.extend_from_slice(unescaped.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0x00..=0x1f => return Err(Malformed),
                byte => out.push(byte),
            }
        }
    }

    /// After `\u`: one code point, a surrogate pair taking two escapes; a lone surrogate is an error.
    fn escaped_code_point(&mut self) -> Result<char, Malformed> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                self.literal(b"\\u")?;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(Malformed);
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(Malformed),
            _ => first,
        };
        char::from_u32(code).ok_or(Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Result<Vec<(String, Value)>, Malformed> {
        object_members(text.as_bytes())
    }

    #[test]
    fn reads_top_level_strings_and_numbers() {
        let got = members(r#" {"sub":"alice","exp":1700000000,"n":-1.5e2,"nested":{"a":[1,{"b":null}]},"ok":true} "#);
        assert_eq!(
            got,
            Ok(vec![
                ("sub".into(), Value::String("alice".into())),
                ("exp".into(), Value::Number(1_700_000_000.0)),
                ("n".into(), Value::Number(-150.0)),
                ("nested".into(), Value::Other),
                ("ok".into(), Value::Other),
            ])
        );
        assert_eq!(members("{}"), Ok(vec![]));
    }

    #[test]
    fn decodes_escapes_and_surrogate_pairs() {
        let got = members(r#"{"s":"a\"\\\/\n\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(got[0].1, Value::String("a\"\\/\né😀".into()));
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in [
            "",
            "[]",
            "\"x\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1}x",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"tab\there\"}",
            "{'a':1}",
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(members(bad), Err(Malformed), "{bad:?}");
        }
        assert_eq!(object_members(b"{\"a\":\"\xff\"}"), Err(Malformed), "invalid UTF-8");
    }

    #[test]
    fn refuses_duplicate_member_names() {
        assert_eq!(members(r#"{"sub":"alice","sub":"bob"}"#), Err(Malformed));
        assert_eq!(members(r#"{"sub":"alice","s\u0075b":"bob"}"#), Err(Malformed), "same name once unescaped");
        assert!(members(r#"{"o":{"k":1,"k":2}}"#).is_ok(), "only top-level names matter");
    }

    #[test]
    fn bounds_nesting() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(members(&deep), Err(Malformed));
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(members(&ok).is_ok());
    }
}
