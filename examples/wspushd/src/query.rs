//! URL query strings, as browsers and URL libraries encode them: the public port's `?user=` (demo
//! mode) and the admin API's parameters.

/// A URL-decoded query parameter: (key, value).
pub type QueryParam = (Vec<u8>, Vec<u8>);

/// Splits a query string into URL-decoded parameters.
pub fn parse_query(query: &str) -> Result<Vec<QueryParam>, &'static str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((url_decode(key)?, url_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space).
pub fn url_decode(text: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("malformed percent-encoding in query")?;
                let decoded = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or("malformed percent-encoding in query")?;
                out.push(decoded);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_handles_escapes_plus_and_garbage() {
        assert_eq!(url_decode("a%20b").unwrap(), b"a b");
        assert_eq!(url_decode("a+b%2Bc").unwrap(), b"a b+c");
        assert_eq!(url_decode("%e2%9c%93").unwrap(), "✓".as_bytes());
        assert!(url_decode("%zz").is_err());
        assert!(url_decode("%4").is_err());
        assert!(url_decode("%+1").is_err());
        assert_eq!(
            parse_query("user=a%20b&&code=4000").unwrap(),
            [(b"user".to_vec(), b"a b".to_vec()), (b"code".to_vec(), b"4000".to_vec())]
        );
    }
}
