//! Per-key options of an `authorized_keys` file, in the spirit of
//! OpenSSH's `permitlisten="..."`: a line of comma-separated `name="value"`
//! entries directly before a key's PEM block applies to that key only.
//! This module owns the syntax; what a value means (e.g. the `HOST:PORT`
//! of `permitlisten`) is checked by the program that uses it.
//!
//! ```text
//! # alice's laptop
//! permitlisten="127.0.0.1:8080",permitlisten="127.0.0.1:9000"
//! -----BEGIN PUBLIC KEY-----
//! ...
//! ```

/// The options of one authorized key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `permitlisten="HOST:PORT"` entries, in file order: where this key
    /// may ask the server to listen (narrowing the server's own list).
    /// Empty = the key has no narrowing entry.
    pub permit_listen: Vec<String>,
}

/// Option names this parser knows.
const KNOWN: &[&str] = &["permitlisten"];

/// True if `line` (trimmed) has the shape of an options line: it starts
/// with an option name followed by `=`. Anything else outside a PEM block
/// is left to the PEM reader's own errors.
pub(crate) fn is_options_line(line: &str) -> bool {
    line.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
    })
}

/// Parses an options line.
///
/// # Errors
/// A message naming the problem: an unknown option, a value that is not
/// double-quoted, an empty value, or text after a closing quote other than
/// a comma.
pub fn parse_key_options(line: &str) -> Result<KeyOptions, String> {
    let mut opts = KeyOptions::default();
    let mut rest = line.trim();
    loop {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("expected name=\"value\" at '{rest}'"))?;
        let name = name.trim();
        if !KNOWN.contains(&name) {
            return Err(format!(
                "unknown key option '{name}' (known: {})",
                KNOWN.join(", ")
            ));
        }
        let quoted = after
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of {name} must be in double quotes"))?;
        let (value, tail) = quoted
            .split_once('"')
            .ok_or_else(|| format!("the value of {name} has no closing quote"))?;
        if value.is_empty() {
            return Err(format!("empty value for {name}"));
        }
        opts.permit_listen.push(value.to_string());
        let tail = tail.trim_start();
        if tail.is_empty() {
            return Ok(opts);
        }
        rest = tail
            .strip_prefix(',')
            .ok_or_else(|| format!("expected ',' between options, found '{tail}'"))?
            .trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permitlisten_entries_in_order() {
        let o =
            parse_key_options(r#"permitlisten="127.0.0.1:8080", permitlisten="[::1]:*""#).unwrap();
        assert_eq!(o.permit_listen, vec!["127.0.0.1:8080", "[::1]:*"]);
        assert!(is_options_line(r#"permitlisten="x""#));
        assert!(!is_options_line("-----BEGIN PUBLIC KEY-----"));
        assert!(!is_options_line("hello"));
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        for (line, needle) in [
            (r#"permitopen="a:1""#, "unknown key option 'permitopen'"),
            ("permitlisten=a:1", "double quotes"),
            (r#"permitlisten="a:1"#, "no closing quote"),
            (r#"permitlisten="""#, "empty value"),
            (r#"permitlisten="a:1" x"#, "expected ','"),
        ] {
            let e = parse_key_options(line).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }
}
