//! OpenSSH public key lines, `ssh-rsa AAAA... comment`, as found in
//! `id_rsa.pub` files and OpenSSH `authorized_keys`. This module owns the
//! line syntax and the key blob (RFC 4253 section 6.6: the string
//! `"ssh-rsa"`, then the mpints `e` and `n`), and turns an `ssh-rsa` line
//! into the PKCS#1 `RSAPublicKey` DER that the PEM path decodes, so both
//! forms meet the same size and validity checks. Other OpenSSH key types
//! are recognised only to say clearly that hytun cannot use them.
//! OpenSSH options before the key type (`from="..." ssh-rsa ...`) are not
//! supported and say so.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::KeyError;
use crate::fingerprint::{TAG_SEQUENCE, push_integer, tlv};

/// The PEM-style label given to a block that came from an `ssh-rsa` line.
pub(crate) const SSH_RSA: &str = "ssh-rsa";

/// OpenSSH key types hytun recognises but cannot use.
const OTHER_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
];

/// A parsed `ssh-rsa` line.
#[derive(Debug)]
pub(crate) struct SshRsaLine {
    /// PKCS#1 `RSAPublicKey` DER of the key.
    pub(crate) pkcs1_der: Vec<u8>,
    /// The text after the key blob, if any.
    pub(crate) comment: Option<String>,
}

/// If `line` (trimmed, not a comment) is an OpenSSH public key line,
/// parses it; `Ok(None)` means it is not one. `number` is its 1-based
/// line number, `path` the file (for errors).
pub(crate) fn parse_line(
    path: &Path,
    number: usize,
    line: &str,
) -> Result<Option<SshRsaLine>, KeyError> {
    let mut fields = line.split_whitespace();
    let Some(kind) = fields.next() else {
        return Ok(None);
    };
    let not_pem = |reason: String| KeyError::NotPem {
        path: path.to_path_buf(),
        line: number,
        reason,
    };
    if kind != SSH_RSA {
        if OTHER_TYPES.contains(&kind) {
            return Err(KeyError::UnsupportedOpenSsh {
                path: path.to_path_buf(),
                line: number,
                kind: kind.to_string(),
            });
        }
        if line
            .split_whitespace()
            .skip(1)
            .any(|f| f == SSH_RSA || OTHER_TYPES.contains(&f))
        {
            return Err(not_pem(
                "OpenSSH options before the key type are not supported; keep only \
                 'ssh-rsa AAAA... comment' and put hytun's options (permitlisten=\"...\") \
                 on the line before it"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let Some(b64) = fields.next() else {
        return Err(not_pem("ssh-rsa line without its base64 key".into()));
    };
    let blob = STANDARD
        .decode(b64)
        .map_err(|e| not_pem(format!("invalid base64 in the ssh-rsa key: {e}")))?;
    let pkcs1_der = rsa_blob_to_pkcs1(&blob).map_err(|why| KeyError::Malformed {
        path: path.to_path_buf(),
        line: number,
        reason: format!("not a valid ssh-rsa key blob ({why})"),
    })?;
    let comment: Vec<&str> = fields.collect();
    Ok(Some(SshRsaLine {
        pkcs1_der,
        comment: (!comment.is_empty()).then(|| comment.join(" ")),
    }))
}

/// Converts an `ssh-rsa` key blob to PKCS#1 `RSAPublicKey` DER.
fn rsa_blob_to_pkcs1(blob: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut rest = blob;
    let kind = take_string(&mut rest)?;
    if kind != SSH_RSA.as_bytes() {
        return Err("the blob is not an ssh-rsa key");
    }
    let e = take_mpint(&mut rest)?;
    let n = take_mpint(&mut rest)?;
    if !rest.is_empty() {
        return Err("trailing bytes after the modulus");
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    push_integer(&mut body, n);
    push_integer(&mut body, e);
    Ok(tlv(TAG_SEQUENCE, &body))
}

/// Takes one SSH `string` (u32 big-endian length, then the bytes).
fn take_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
        return Err("truncated length");
    };
    let len = u32::from_be_bytes(*len) as usize;
    if tail.len() < len {
        return Err("truncated field");
    }
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    Ok(value)
}

/// Takes one SSH `mpint` that must be positive; returns its magnitude.
fn take_mpint<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let value = take_string(rest)?;
    match value.first() {
        None => Err("zero where a key number belongs"),
        Some(b) if b & 0x80 != 0 => Err("negative key number"),
        Some(_) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ssh_rsa_line, test_key};
    use rsa::pkcs1::EncodeRsaPublicKey as _;

    fn parse(line: &str) -> Result<Option<SshRsaLine>, KeyError> {
        parse_line(Path::new("authorized_keys"), 7, line)
    }

    #[test]
    fn an_ssh_rsa_line_becomes_the_same_pkcs1_key() {
        let public = test_key().to_public_key();
        let line = ssh_rsa_line(&public, "alice@laptop work");
        let parsed = match parse(&line) {
            Ok(Some(p)) => p,
            other => panic!("expected a key, got {other:?}"),
        };
        let expected = match public.to_pkcs1_der() {
            Ok(d) => d.as_bytes().to_vec(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(parsed.pkcs1_der, expected);
        assert_eq!(parsed.comment.as_deref(), Some("alice@laptop work"));
    }

    #[test]
    fn other_lines_are_not_openssh() {
        assert!(matches!(parse("hello world"), Ok(None)));
        assert!(matches!(parse("-----BEGIN X-----"), Ok(None)));
    }

    #[test]
    fn other_key_types_and_options_are_explained() {
        match parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me") {
            Err(e @ KeyError::UnsupportedOpenSsh { line: 7, .. }) => {
                assert!(e.to_string().contains("ssh-ed25519 keys are not supported"))
            }
            other => panic!("{other:?}"),
        }
        match parse("from=\"10.0.0.1\" ssh-rsa AAAA me") {
            Err(e @ KeyError::NotPem { line: 7, .. }) => {
                assert!(e.to_string().contains("options before the key type"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_blobs_are_errors_not_panics() {
        assert!(matches!(parse("ssh-rsa"), Err(KeyError::NotPem { .. })));
        assert!(matches!(parse("ssh-rsa !!!"), Err(KeyError::NotPem { .. })));
        for blob in [
            &[0, 0][..],
            &[0, 0, 0, 7, b's', b's', b'h'][..],
            &[0xff, 0xff, 0xff, 0xff][..],
            &[0, 0, 0, 7, b's', b's', b'h', b'-', b'd', b's', b's'][..],
        ] {
            let line = format!("ssh-rsa {}", STANDARD.encode(blob));
            assert!(
                matches!(parse(&line), Err(KeyError::Malformed { line: 7, .. })),
                "{blob:?}"
            );
        }
        // Negative e, and a trailing byte.
        let mut blob = Vec::new();
        for field in [&b"ssh-rsa"[..], &[0x80][..], &[0x01][..]] {
            blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
            blob.extend_from_slice(field);
        }
        let line = format!("ssh-rsa {}", STANDARD.encode(&blob));
        assert!(matches!(parse(&line), Err(KeyError::Malformed { .. })));
        blob[15] = 0x01;
        blob.push(0);
        let line = format!("ssh-rsa {}", STANDARD.encode(&blob));
        assert!(matches!(parse(&line), Err(KeyError::Malformed { .. })));
    }
}
