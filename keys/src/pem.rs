//! A small line-oriented PEM reader for key files. It splits a text file into
//! `-----BEGIN X-----` / `-----END X-----` blocks, remembering each block's
//! starting line and the nearest `#` comment before it, takes OpenSSH
//! `ssh-rsa` lines as one-line blocks (labelled `ssh-rsa`, see `openssh`),
//! and rejects any other text outside blocks with the offending line number. Decoding the DER inside
//! a block is left to the callers in `load`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::KeyError;

/// One decoded PEM block.
#[derive(Debug)]
pub(crate) struct Block {
    /// The label between `BEGIN ` and the closing dashes.
    pub(crate) label: String,
    /// The base64-decoded contents.
    pub(crate) der: Vec<u8>,
    /// 1-based line number of the `-----BEGIN` line.
    pub(crate) line: usize,
    /// Text of the last `#` comment line since the previous block, if any.
    pub(crate) comment: Option<String>,
    /// Whether RFC 1421 headers mark the block as encrypted (`Proc-Type: 4,ENCRYPTED`).
    pub(crate) encrypted: bool,
    /// The per-key options line right before the block (its line number
    /// and text), if any (see `options`).
    pub(crate) options: Option<(usize, String)>,
}

/// Parses every PEM block in `text`; `path` is only used for error messages.
pub(crate) fn parse_blocks(path: &Path, text: &str) -> Result<Vec<Block>, KeyError> {
    let not_pem = |line: usize, reason: String| KeyError::NotPem {
        path: path.to_path_buf(),
        line,
        reason,
    };

    let mut blocks = Vec::new();
    let mut comment: Option<String> = None;
    let mut options: Option<(usize, String)> = None;
    // (label, begin line, base64 text, encrypted)
    let mut open: Option<(String, usize, String, bool)> = None;

    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.trim();
        match open.take() {
            None => {
                if line.is_empty() {
                    continue;
                }
                if let Some(rest) = line.strip_prefix('#') {
                    let rest = rest.trim();
                    comment = (!rest.is_empty()).then(|| rest.to_string());
                    continue;
                }
                if let Some(label) = boundary(line, "-----BEGIN ") {
                    open = Some((label.to_string(), number, String::new(), false));
                    continue;
                }
                if boundary(line, "-----END ").is_some() {
                    return Err(not_pem(number, "END line without a BEGIN line".into()));
                }
                if let Some(ssh) = crate::openssh::parse_line(path, number, line)? {
                    blocks.push(Block {
                        label: crate::openssh::SSH_RSA.to_string(),
                        der: ssh.pkcs1_der,
                        line: number,
                        comment: ssh.comment.or_else(|| comment.take()),
                        encrypted: false,
                        options: options.take(),
                    });
                    comment = None;
                    continue;
                }
                if crate::options::is_options_line(line) {
                    if options.is_some() {
                        return Err(not_pem(number, "two key option lines for one key".into()));
                    }
                    options = Some((number, line.to_string()));
                    continue;
                }
                return Err(not_pem(
                    number,
                    "expected '-----BEGIN ...-----', a '#' comment or a blank line".into(),
                ));
            }
            Some((label, begin, mut body, mut encrypted)) => {
                if let Some(end_label) = boundary(line, "-----END ") {
                    if end_label != label {
                        return Err(not_pem(
                            number,
                            format!("'-----END {end_label}-----' does not match BEGIN {label}"),
                        ));
                    }
                    let der = STANDARD.decode(body.as_bytes()).map_err(|e| {
                        not_pem(begin, format!("invalid base64 in {label} block: {e}"))
                    })?;
                    if der.is_empty() {
                        return Err(not_pem(begin, format!("empty {label} block")));
                    }
                    blocks.push(Block {
                        label,
                        der,
                        line: begin,
                        comment: comment.take(),
                        encrypted,
                        options: options.take(),
                    });
                    continue;
                }
                if line.starts_with("-----") {
                    return Err(not_pem(
                        number,
                        format!("missing '-----END {label}-----' for the block at line {begin}"),
                    ));
                }
                if let Some((name, value)) = line.split_once(':') {
                    // RFC 1421 encapsulated header, as in legacy encrypted PKCS#1.
                    if name.trim().eq_ignore_ascii_case("Proc-Type")
                        && value.to_ascii_uppercase().contains("ENCRYPTED")
                    {
                        encrypted = true;
                    }
                } else {
                    body.extend(line.chars().filter(|c| !c.is_whitespace()));
                }
                open = Some((label, begin, body, encrypted));
            }
        }
    }
    if let Some((label, begin, ..)) = open {
        return Err(not_pem(
            begin,
            format!("block is not terminated by '-----END {label}-----'"),
        ));
    }
    if let Some((line, _)) = options {
        return Err(not_pem(
            line,
            "key options line without a key after it".into(),
        ));
    }
    Ok(blocks)
}

/// If `line` is `PREFIX<label>-----`, returns the label.
fn boundary<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let label = line.strip_prefix(prefix)?.strip_suffix("-----")?;
    let ok = !label.is_empty()
        && !label.starts_with([' ', '-'])
        && !label.ends_with([' ', '-'])
        && label.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ok.then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Block>, KeyError> {
        parse_blocks(Path::new("f.pem"), text)
    }

    fn line_of(err: KeyError) -> usize {
        match err {
            KeyError::NotPem { line, .. } => line,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn parses_blocks_comments_and_crlf() {
        let text = "# first\r\n\r\n-----BEGIN A-----\r\nAAEC\r\nAw==\r\n-----END A-----\r\n\
                    \n-----BEGIN B C-----\nBA==\n-----END B C-----\n";
        let blocks = match parse(text) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "A");
        assert_eq!(blocks[0].der, vec![0, 1, 2, 3]);
        assert_eq!(blocks[0].line, 3);
        assert_eq!(blocks[0].comment.as_deref(), Some("first"));
        assert_eq!(blocks[1].label, "B C");
        assert_eq!(blocks[1].line, 8);
        assert_eq!(blocks[1].comment, None);
        assert!(!blocks[0].encrypted);
    }

    #[test]
    fn garbage_is_reported_with_its_line() {
        assert_eq!(line_of(parse("# c\n\nhello\n").unwrap_err()), 3);
        let text = "-----BEGIN A-----\nAA==\n-----END A-----\ntrailing\n";
        assert_eq!(line_of(parse(text).unwrap_err()), 4);
    }

    #[test]
    fn structural_errors_are_reported() {
        assert_eq!(line_of(parse("-----BEGIN A-----\nAA==\n").unwrap_err()), 1);
        let mismatch = "-----BEGIN A-----\nAA==\n-----END B-----\n";
        assert_eq!(line_of(parse(mismatch).unwrap_err()), 3);
        let bad_b64 = "\n-----BEGIN A-----\n!!!!\n-----END A-----\n";
        assert_eq!(line_of(parse(bad_b64).unwrap_err()), 2);
        assert_eq!(line_of(parse("-----END A-----\n").unwrap_err()), 1);
        let nested = "-----BEGIN A-----\n-----BEGIN B-----\n";
        assert_eq!(line_of(parse(nested).unwrap_err()), 2);
    }

    #[test]
    fn encrypted_header_is_detected() {
        let text = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                    DEK-Info: AES-128-CBC,00\n\nAA==\n-----END RSA PRIVATE KEY-----\n";
        let blocks = match parse(text) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        assert!(blocks[0].encrypted);
    }

    #[test]
    fn empty_text_has_no_blocks() {
        assert!(matches!(parse("\n# only a comment\n"), Ok(b) if b.is_empty()));
    }
}
