//! The path of a request under `/ari/`, checked before anything is forwarded: a node's URL is
//! built from it, and URL parsers resolve `..`, `%2e%2e` and backslashes, so a path that could
//! climb out of `/ari/` never leaves the gateway.

/// One path segment: as the client sent it (still percent-encoded, what is forwarded) and
/// decoded (the resource id the ownership map knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub raw: String,
    pub text: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// `channels/`: ARI answers with a hint to drop the slash.
    TrailingSlash(String),
    /// Empty segments, dot segments, encoded slashes, backslashes, control characters.
    Unsafe,
}

/// Splits the part after `/ari/` into segments, refusing anything a URL parser would not
/// keep as one plain segment.
pub fn segments(rest: &str) -> Result<Vec<Segment>, PathError> {
    if let Some(stripped) = rest.strip_suffix('/') {
        if !stripped.is_empty() && segments(stripped).is_ok() {
            return Err(PathError::TrailingSlash(stripped.to_string()));
        }
        return Err(PathError::Unsafe);
    }
    rest.split('/').map(segment).collect()
}

fn segment(raw: &str) -> Result<Segment, PathError> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| PathError::Unsafe)?;
    let text = decoded.into_owned();
    let unsafe_char = |c: char| c == '/' || c == '\\' || c.is_control();
    if text.is_empty() || text == "." || text == ".." || text.chars().any(unsafe_char) || raw.contains(['\\', '?', '#']) {
        return Err(PathError::Unsafe);
    }
    Ok(Segment { raw: raw.to_string(), text })
}

/// Percent-encodes an id for use as one path segment (ids from events or bodies).
pub fn encode_segment(id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b':').remove(b'@');
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_split_into_decoded_segments() {
        let s = segments("channels/abc%20d/answer").unwrap();
        assert_eq!(s.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(), ["channels", "abc d", "answer"]);
        assert_eq!(s[1].raw, "abc%20d");
        assert_eq!(segments("channels/1733.5").unwrap()[1].text, "1733.5");
    }

    #[test]
    fn escapes_are_refused() {
        for p in [
            "..",
            "channels/..",
            "channels/../../x",
            "channels/%2e%2e/x",
            "channels/%2E%2e",
            "channels/a%2fb",
            "channels/a%2Fb",
            "a\\..\\b",
            "channels/%5c..",
            "channels//x",
            "channels/.",
            "channels/%00",
            "channels/%ff",
            "/channels",
            "",
        ] {
            assert_eq!(segments(p), Err(PathError::Unsafe), "{p}");
        }
    }

    #[test]
    fn a_trailing_slash_gets_ari_hint() {
        assert_eq!(segments("channels/"), Err(PathError::TrailingSlash("channels".into())));
        assert_eq!(segments("channels/x/"), Err(PathError::TrailingSlash("channels/x".into())));
        assert_eq!(segments("../"), Err(PathError::Unsafe));
    }

    #[test]
    fn ids_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("node1-1733.5"), "node1-1733.5");
    }
}
