//! Loading keys from disk: a private key (`--key`), a single public key
//! (`--server-key`) and an `authorized_keys` file of concatenated public
//! keys. This module owns the file-level policy: size cap, the OpenSSH-style
//! refusal of private keys readable by group/others, which PEM labels are
//! accepted where, the 2048..=4096-bit size window and de-duplication of
//! authorized keys by fingerprint.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

use crate::pem::{Block, parse_blocks};
use crate::{
    Fingerprint, KeyError, KeyKind, MAX_KEY_BITS, MIN_KEY_BITS, RsaPrivateKey, RsaPublicKey,
    fingerprint, key_bits,
};

/// Key files (and authorized_keys files) larger than this are rejected unread.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One entry of an `authorized_keys` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The client's public key.
    pub key: RsaPublicKey,
    /// Its fingerprint, precomputed for logging and lookup.
    pub fingerprint: Fingerprint,
    /// The nearest `#` comment line before the key's PEM block, if any.
    pub comment: Option<String>,
    /// The key's options line (`permitlisten="..."`), if any.
    pub options: crate::KeyOptions,
}

/// Loads an unencrypted PKCS#8 or PKCS#1 RSA private key from a PEM file.
///
/// # Errors
/// On unix, a file with any group/other permission bit set is refused
/// ([`KeyError::PermissionsTooOpen`]). Missing or unreadable files, non-PEM
/// content, a public key or other PEM kind, an encrypted key, invalid key data
/// and moduli outside 2048..=4096 bits each give their own [`KeyError`].
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey, KeyError> {
    let text = read_key_file(path, true)?;
    let block = single_block(path, &text)?;
    let line = block.line;
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    if block.encrypted || block.label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::Encrypted {
            path: path.to_path_buf(),
            line,
        });
    }
    let key = match block.label.as_str() {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&block.der)
            .map_err(|e| malformed(format!("not a valid PKCS#8 RSA private key ({e})")))?,
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&block.der)
            .map_err(|e| malformed(format!("not a valid PKCS#1 RSA private key ({e})")))?,
        other => {
            return Err(KeyError::WrongKind {
                path: path.to_path_buf(),
                line,
                found: other.to_string(),
                expected: KeyKind::Private,
            });
        }
    };
    check_size(path, line, key.as_public_key())?;
    Ok(key)
}

/// Loads one SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM public key.
///
/// # Errors
/// Missing or unreadable files, non-PEM content, more than one block, a
/// private key given by mistake, invalid key data and moduli outside
/// 2048..=4096 bits each give their own [`KeyError`].
pub fn load_public_key(path: &Path) -> Result<RsaPublicKey, KeyError> {
    let text = read_key_file(path, false)?;
    let block = single_block(path, &text)?;
    decode_public(path, &block)
}

/// Loads an `authorized_keys` file: PEM public keys concatenated, with `#`
/// comment lines and blank lines between blocks. Each key's comment is the
/// last `#` line since the previous block. A key listed twice is returned
/// once (the first occurrence, with its comment).
///
/// # Errors
/// Any line that is neither a comment, a blank line nor part of a PEM block,
/// any block that is not a valid 2048..=4096-bit RSA public key, and a file
/// with no key at all are errors naming the file and line.
pub fn load_authorized_keys(path: &Path) -> Result<Vec<AuthorizedKey>, KeyError> {
    let text = read_key_file(path, false)?;
    let blocks = parse_blocks(path, &text)?;
    if blocks.is_empty() {
        return Err(KeyError::NoKeys {
            path: path.to_path_buf(),
        });
    }
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(blocks.len());
    for block in blocks {
        let key = decode_public(path, &block)?;
        let fingerprint = fingerprint(&key);
        let options = match &block.options {
            None => crate::KeyOptions::default(),
            Some((line, text)) => {
                crate::parse_key_options(text).map_err(|reason| KeyError::Malformed {
                    path: path.to_path_buf(),
                    line: *line,
                    reason,
                })?
            }
        };
        if seen.insert(fingerprint) {
            keys.push(AuthorizedKey {
                key,
                fingerprint,
                comment: block.comment,
                options,
            });
        }
    }
    Ok(keys)
}

fn decode_public(path: &Path, block: &Block) -> Result<RsaPublicKey, KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        line: block.line,
        reason,
    };
    let key = match block.label.as_str() {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&block.der)
            .map_err(|e| malformed(format!("not a valid RSA SubjectPublicKeyInfo ({e})")))?,
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&block.der)
            .map_err(|e| malformed(format!("not a valid PKCS#1 RSA public key ({e})")))?,
        other => {
            return Err(KeyError::WrongKind {
                path: path.to_path_buf(),
                line: block.line,
                found: other.to_string(),
                expected: KeyKind::Public,
            });
        }
    };
    check_size(path, block.line, &key)?;
    Ok(key)
}

fn check_size(path: &Path, line: usize, key: &RsaPublicKey) -> Result<(), KeyError> {
    let bits = key_bits(key);
    if (MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::UnsupportedSize {
            path: path.to_path_buf(),
            line,
            bits,
        })
    }
}

/// Parses `text` and insists on exactly one PEM block.
fn single_block(path: &Path, text: &str) -> Result<Block, KeyError> {
    let mut blocks = parse_blocks(path, text)?.into_iter();
    let Some(first) = blocks.next() else {
        return Err(KeyError::NoKeys {
            path: path.to_path_buf(),
        });
    };
    if let Some(second) = blocks.next() {
        return Err(KeyError::MultipleKeys {
            path: path.to_path_buf(),
            line: second.line,
        });
    }
    Ok(first)
}

/// Opens and reads a key file as UTF-8 text. When `private`, the permission
/// check is made on the opened file (no race between check and read).
fn read_key_file(path: &Path, private: bool) -> Result<String, KeyError> {
    let unreadable = |source: io::Error| KeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            unreadable(e)
        }
    })?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        )));
    }
    if private {
        check_private_permissions(path, &meta)?;
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| KeyError::NotPem {
        path: path.to_path_buf(),
        line: 0,
        reason: "the file is binary, not text (DER keys must be converted to PEM)".into(),
    })
}

#[cfg(unix)]
fn check_private_permissions(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::PermissionsTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_permissions(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{other_key, test_key};
    use crate::write_keypair;
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    use std::fs;

    fn tempdir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        }
    }

    /// Writes `text` to `dir/name` with `mode` (unix) and returns the path.
    fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        if let Err(e) = fs::write(&path, text) {
            panic!("write {}: {e}", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
                panic!("chmod: {e}");
            }
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }

    fn public_pem(key: &RsaPrivateKey) -> String {
        match key.to_public_key().to_public_key_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("encode: {e}"),
        }
    }

    #[test]
    fn roundtrip_through_write_keypair() {
        let dir = tempdir();
        let key = test_key();
        let paths = match write_keypair(dir.path(), "server", key, false) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        match load_private_key(&paths.private) {
            Ok(loaded) => assert_eq!(&loaded, key),
            Err(e) => panic!("{e}"),
        }
        match load_public_key(&paths.public) {
            Ok(loaded) => assert_eq!(loaded, key.to_public_key()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn pkcs1_files_are_accepted() {
        let dir = tempdir();
        let key = test_key();
        let private = match key.to_pkcs1_pem(LineEnding::CRLF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let path = write_file(dir.path(), "k.key", &private, 0o600);
        assert!(matches!(load_private_key(&path), Ok(k) if &k == key));

        let public = match key.to_public_key().to_pkcs1_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let path = write_file(dir.path(), "k.pub", &public, 0o644);
        assert!(matches!(load_public_key(&path), Ok(k) if k == key.to_public_key()));
    }

    #[cfg(unix)]
    #[test]
    fn too_open_private_key_is_refused() {
        let dir = tempdir();
        let pem = match test_key().to_pkcs8_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write_file(dir.path(), "open.key", &pem, mode);
            match load_private_key(&path) {
                Err(KeyError::PermissionsTooOpen { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: expected too-open error, got {other:?}"),
            }
        }
        let path = write_file(dir.path(), "open.key", &pem, 0o400);
        assert!(load_private_key(&path).is_ok());
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempdir();
        let path = dir.path().join("nope.key");
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("nope.key"));
        assert!(matches!(
            load_authorized_keys(&path),
            Err(KeyError::NotFound { .. })
        ));
    }

    #[test]
    fn public_key_given_as_private_is_wrong_kind() {
        let dir = tempdir();
        let path = write_file(dir.path(), "server.pub", &public_pem(test_key()), 0o600);
        match load_private_key(&path) {
            Err(e @ KeyError::WrongKind { .. }) => {
                assert!(e.to_string().contains("this is a public key"), "{e}");
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
    }

    #[test]
    fn private_key_given_as_public_is_wrong_kind() {
        let dir = tempdir();
        let pem = match test_key().to_pkcs8_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let path = write_file(dir.path(), "server.key", &pem, 0o600);
        match load_public_key(&path) {
            Err(e @ KeyError::WrongKind { .. }) => {
                assert!(
                    e.to_string().contains("pass the public key (.pub) file"),
                    "{e}"
                );
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
        assert!(matches!(
            load_authorized_keys(&path),
            Err(KeyError::WrongKind { line: 1, .. })
        ));
    }

    #[test]
    fn garbage_and_binary_files_are_not_pem() {
        let dir = tempdir();
        let path = write_file(dir.path(), "g.key", "hello world\n", 0o600);
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::NotPem { line: 1, .. })
        ));
        let bin = dir.path().join("b.key");
        if let Err(e) = fs::write(&bin, [0x30u8, 0x82, 0xff, 0xfe]) {
            panic!("{e}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Err(e) = fs::set_permissions(&bin, fs::Permissions::from_mode(0o600)) {
                panic!("{e}");
            }
        }
        assert!(matches!(
            load_private_key(&bin),
            Err(KeyError::NotPem { line: 0, .. })
        ));
        let empty = write_file(dir.path(), "e.pub", "\n", 0o644);
        assert!(matches!(
            load_public_key(&empty),
            Err(KeyError::NoKeys { .. })
        ));
    }

    #[test]
    fn encrypted_and_corrupt_keys_are_rejected() {
        let dir = tempdir();
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let path = write_file(dir.path(), "enc.key", enc, 0o600);
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::Encrypted { line: 1, .. })
        ));
        let corrupt = "\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let path = write_file(dir.path(), "bad.key", corrupt, 0o600);
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::Malformed { line: 2, .. })
        ));
    }

    #[test]
    fn small_keys_are_unsupported() {
        let dir = tempdir();
        let small = match RsaPrivateKey::new(&mut getrandom::SysRng, 1024) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        let pem = match small.to_pkcs8_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let path = write_file(dir.path(), "small.key", &pem, 0o600);
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::UnsupportedSize { bits: 1024, .. })
        ));
        let path = write_file(dir.path(), "small.pub", &public_pem(&small), 0o644);
        assert!(matches!(
            load_public_key(&path),
            Err(KeyError::UnsupportedSize { bits: 1024, .. })
        ));
    }

    #[test]
    fn public_key_file_must_hold_one_key() {
        let dir = tempdir();
        let text = format!("{}{}", public_pem(test_key()), public_pem(other_key()));
        let path = write_file(dir.path(), "two.pub", &text, 0o644);
        assert!(matches!(
            load_public_key(&path),
            Err(KeyError::MultipleKeys { .. })
        ));
    }

    #[test]
    fn authorized_keys_with_comments_and_two_keys() {
        let dir = tempdir();
        let a = public_pem(test_key());
        let b = public_pem(other_key());
        // Key `a` appears twice; the duplicate must be dropped.
        let text = format!("# alice laptop\n{a}\n# ignored\n\n# bob\n\n{b}{a}");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let keys = match load_authorized_keys(&path) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key, test_key().to_public_key());
        assert_eq!(keys[0].comment.as_deref(), Some("alice laptop"));
        assert_eq!(keys[0].fingerprint, fingerprint(&keys[0].key));
        assert_eq!(keys[1].key, other_key().to_public_key());
        assert_eq!(keys[1].comment.as_deref(), Some("bob"));
    }

    #[test]
    fn authorized_keys_garbage_has_line_number() {
        let dir = tempdir();
        let a = public_pem(test_key());
        let lines_in_a = a.lines().count();
        let text = format!("# ok\n{a}ssh-rsa AAAAB3Nza... user@host\n");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let err = load_authorized_keys(&path).unwrap_err();
        match &err {
            KeyError::NotPem { line, .. } => assert_eq!(*line, lines_in_a + 2),
            other => panic!("expected NotPem, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains("authorized_keys' line"), "{shown}");
    }

    #[test]
    fn authorized_keys_options_apply_to_the_next_key_only() {
        let dir = tempdir();
        let a = public_pem(test_key());
        let b = public_pem(other_key());
        let text = format!("# alice\npermitlisten=\"127.0.0.1:8080\"\n{a}\n{b}");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let keys = match load_authorized_keys(&path) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(keys[0].options.permit_listen, vec!["127.0.0.1:8080"]);
        assert_eq!(keys[0].comment.as_deref(), Some("alice"));
        assert!(keys[1].options.permit_listen.is_empty());
        // A bad option names its line; a dangling options line is an error.
        let text = format!("\npermitopen=\"x:1\"\n{a}");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let shown = load_authorized_keys(&path).unwrap_err().to_string();
        assert!(
            shown.contains("line 2") && shown.contains("permitopen"),
            "{shown}"
        );
        let text = format!("{a}permitlisten=\"x:1\"\n");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let shown = load_authorized_keys(&path).unwrap_err().to_string();
        assert!(shown.contains("without a key"), "{shown}");
    }

    #[test]
    fn empty_authorized_keys_is_an_error() {
        let dir = tempdir();
        let path = write_file(dir.path(), "authorized_keys", "# nobody yet\n", 0o644);
        assert!(matches!(
            load_authorized_keys(&path),
            Err(KeyError::NoKeys { .. })
        ));
    }
}
