//! Loading keys from disk: a private key (`--key`), a single public key
//! (`--server-key`) and an `authorized_keys` file of concatenated public
//! keys. This module owns the file-level policy: size cap, the OpenSSH-style
//! refusal of private keys readable by group/others (checked after the
//! contents, so a public key given as a private one is named as such), the
//! StrictModes checks of [`crate::strict`], which PEM labels are accepted
//! where, the 2048..=4096-bit size window and de-duplication of authorized
//! keys by fingerprint. It also lists the keys of any key file with their
//! fingerprints ([`fingerprint_file`]).

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
/// The contents are checked first: missing or unreadable files, non-PEM
/// content and a public key or other PEM kind each give their own
/// [`KeyError`]. Then, on unix, a file with any group/other permission bit
/// set is refused ([`KeyError::PermissionsTooOpen`]), and so is a directory
/// above it that others can write ([`KeyError::Insecure`]). Last, an
/// encrypted key, invalid key data and moduli outside 2048..=4096 bits.
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey, KeyError> {
    let (text, meta) = read_key_file(path)?;
    let block = single_block(path, &text)?;
    let line = block.line;
    if !is_private_label(&block.label) {
        return Err(KeyError::WrongKind {
            path: path.to_path_buf(),
            line,
            found: block.label,
            expected: KeyKind::Private,
        });
    }
    check_private_permissions(path, &meta)?;
    crate::strict::check_secure_dirs(path)?;
    let key = decode_private(path, &block)?;
    check_size(path, line, key.as_public_key())?;
    Ok(key)
}

fn is_private_label(label: &str) -> bool {
    matches!(
        label,
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
    )
}

/// Decodes a block with a private-key label (see [`is_private_label`]).
fn decode_private(path: &Path, block: &Block) -> Result<RsaPrivateKey, KeyError> {
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
    match block.label.as_str() {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&block.der)
            .map_err(|e| malformed(format!("not a valid PKCS#8 RSA private key ({e})"))),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&block.der)
            .map_err(|e| malformed(format!("not a valid PKCS#1 RSA private key ({e})"))),
        other => Err(KeyError::WrongKind {
            path: path.to_path_buf(),
            line,
            found: other.to_string(),
            expected: KeyKind::Private,
        }),
    }
}

/// One key found by [`fingerprint_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    /// The fingerprint of the (public half of the) key.
    pub fingerprint: Fingerprint,
    /// Its modulus size in bits.
    pub bits: usize,
    /// Whether the file holds the private key or only the public one.
    pub kind: KeyKind,
    /// 1-based line where the key starts.
    pub line: usize,
    /// The `#` comment before it, or an `ssh-rsa` line's comment.
    pub comment: Option<String>,
}

/// Lists every key in a `.pub`, `.key` or `authorized_keys` file with its
/// fingerprint, the value the server and client log. Only reads the file:
/// the permission and StrictModes checks of the loaders do not apply.
///
/// # Errors
/// Missing or unreadable files, non-PEM content, a file without keys and
/// any block that is not a valid 2048..=4096-bit RSA key (or is encrypted).
pub fn fingerprint_file(path: &Path) -> Result<Vec<KeyListing>, KeyError> {
    let (text, _) = read_key_file(path)?;
    let blocks = parse_blocks(path, &text)?;
    if blocks.is_empty() {
        return Err(KeyError::NoKeys {
            path: path.to_path_buf(),
        });
    }
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let (public, kind) = if is_private_label(&block.label) {
            let key = decode_private(path, &block)?;
            (key.to_public_key(), KeyKind::Private)
        } else {
            (decode_public(path, &block)?, KeyKind::Public)
        };
        check_size(path, block.line, &public)?;
        out.push(KeyListing {
            fingerprint: fingerprint(&public),
            bits: key_bits(&public),
            kind,
            line: block.line,
            comment: block.comment,
        });
    }
    Ok(out)
}

/// Loads one SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM public key.
///
/// # Errors
/// Missing or unreadable files, non-PEM content, more than one block, a
/// private key given by mistake, invalid key data and moduli outside
/// 2048..=4096 bits each give their own [`KeyError`]; so does a directory
/// above the file that others can write ([`KeyError::Insecure`]).
pub fn load_public_key(path: &Path) -> Result<RsaPublicKey, KeyError> {
    let (text, _) = read_key_file(path)?;
    let block = single_block(path, &text)?;
    let key = decode_public(path, &block)?;
    crate::strict::check_secure_dirs(path)?;
    Ok(key)
}

/// Loads an `authorized_keys` file: PEM public keys and OpenSSH `ssh-rsa`
/// lines, with `#` comment lines and blank lines between them. Each key's
/// comment is an `ssh-rsa` line's own comment, else the last `#` line since
/// the previous key. A key listed twice is returned once (the first
/// occurrence, with its comment).
///
/// # Errors
/// Any line that is neither a comment, a blank line, an `ssh-rsa` line nor
/// part of a PEM block, any key that is not a valid 2048..=4096-bit RSA
/// public key, and a file with no key at all are errors naming the file and
/// line. Then StrictModes: a file or a directory above it that others can
/// write, or that another user owns, is refused ([`KeyError::Insecure`]).
pub fn load_authorized_keys(path: &Path) -> Result<Vec<AuthorizedKey>, KeyError> {
    let (text, _) = read_key_file(path)?;
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
    crate::strict::check_secure_file(path)?;
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
        crate::openssh::SSH_RSA => RsaPublicKey::from_pkcs1_der(&block.der)
            .map_err(|e| malformed(format!("not a valid ssh-rsa public key ({e})")))?,
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

/// Opens and reads a key file as UTF-8 text, and returns it with the opened
/// file's metadata (for a permission check without a race between check
/// and read).
fn read_key_file(path: &Path) -> Result<(String, std::fs::Metadata), KeyError> {
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
    let text = String::from_utf8(bytes).map_err(|_| KeyError::NotPem {
        path: path.to_path_buf(),
        line: 0,
        reason: "the file is binary, not text (DER keys must be converted to PEM)".into(),
    })?;
    Ok((text, meta))
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

    #[test]
    fn contents_are_checked_before_permissions() {
        let dir = tempdir();
        // A world-readable .pub given as the private key: the message says
        // what the file is, not "chmod 600".
        let path = write_file(dir.path(), "server.pub", &public_pem(test_key()), 0o644);
        match load_private_key(&path) {
            Err(e @ KeyError::WrongKind { .. }) => {
                let shown = e.to_string();
                assert!(shown.contains("this is a public key"), "{shown}");
                assert!(!shown.contains("chmod"), "{shown}");
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
        let path = write_file(dir.path(), "notes.key", "hello\n", 0o644);
        assert!(matches!(
            load_private_key(&path),
            Err(KeyError::NotPem { line: 1, .. })
        ));
    }

    #[test]
    fn ssh_rsa_lines_are_accepted_beside_pem() {
        let dir = tempdir();
        let a = crate::test_support::ssh_rsa_line(&test_key().to_public_key(), "alice@laptop");
        let b = public_pem(other_key());
        let text = format!("# bob\n{b}\n# ignored: the line has its own\n{a}\n");
        let path = write_file(dir.path(), "authorized_keys", &text, 0o600);
        let keys = match load_authorized_keys(&path) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].key, test_key().to_public_key());
        assert_eq!(keys[1].comment.as_deref(), Some("alice@laptop"));
        // The fingerprint is hytun's (SPKI), whatever the file format.
        assert_eq!(
            keys[1].fingerprint,
            fingerprint(&test_key().to_public_key())
        );
        // A one-line .pub in OpenSSH format works as a pinned key too, and
        // is named as a public key when given as a private one.
        let pub_path = write_file(dir.path(), "id_rsa.pub", &format!("{a}\n"), 0o644);
        assert!(matches!(load_public_key(&pub_path), Ok(k) if k == test_key().to_public_key()));
        match load_private_key(&pub_path) {
            Err(e @ KeyError::WrongKind { .. }) => {
                assert!(
                    e.to_string()
                        .contains("this is a public key (an OpenSSH ssh-rsa line)"),
                    "{e}"
                );
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
        let ed = write_file(
            dir.path(),
            "ak2",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me\n",
            0o600,
        );
        assert!(matches!(
            load_authorized_keys(&ed),
            Err(KeyError::UnsupportedOpenSsh { line: 1, .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn authorized_keys_writable_by_others_is_refused() {
        let dir = tempdir();
        let path = write_file(
            dir.path(),
            "authorized_keys",
            &public_pem(test_key()),
            0o664,
        );
        match load_authorized_keys(&path) {
            Err(e @ KeyError::Insecure { .. }) => {
                let shown = e.to_string();
                assert!(
                    shown.contains(&format!("run chmod go-w {}", path.display())),
                    "{shown}"
                );
            }
            other => panic!("expected Insecure, got {other:?}"),
        }
        let path = write_file(
            dir.path(),
            "authorized_keys",
            &public_pem(test_key()),
            0o644,
        );
        assert!(load_authorized_keys(&path).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn a_writable_directory_above_a_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempdir();
        let sub = dir.path().join("open");
        if let Err(e) = fs::create_dir(&sub) {
            panic!("{e}");
        }
        let pem = match test_key().to_pkcs8_pem(LineEnding::LF) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let key = write_file(&sub, "server.key", &pem, 0o600);
        let public = write_file(&sub, "server.pub", &public_pem(test_key()), 0o644);
        if let Err(e) = fs::set_permissions(&sub, fs::Permissions::from_mode(0o775)) {
            panic!("{e}");
        }
        for err in [load_private_key(&key).err(), load_public_key(&public).err()] {
            match err {
                Some(e @ KeyError::Insecure { .. }) => {
                    let shown = e.to_string();
                    assert!(shown.starts_with("directory '"), "{shown}");
                    assert!(
                        shown.contains(&format!("chmod go-w {}", sub.display())),
                        "{shown}"
                    );
                }
                other => panic!("expected Insecure, got {other:?}"),
            }
        }
        if let Err(e) = fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)) {
            panic!("{e}");
        }
        assert!(load_private_key(&key).is_ok());
    }

    #[test]
    fn fingerprint_file_lists_every_key_of_any_key_file() {
        let dir = tempdir();
        let paths = match write_keypair(dir.path(), "server", test_key(), false) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let expected = fingerprint(&test_key().to_public_key());
        for (path, kind) in [
            (&paths.private, KeyKind::Private),
            (&paths.public, KeyKind::Public),
        ] {
            match fingerprint_file(path).as_deref() {
                Ok([one]) => {
                    assert_eq!(one.fingerprint, expected);
                    assert_eq!(one.kind, kind);
                    assert_eq!(one.bits, 2048);
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let text = format!(
            "# a\n{}# b\n{}",
            public_pem(test_key()),
            public_pem(other_key())
        );
        let ak = write_file(dir.path(), "authorized_keys", &text, 0o644);
        let listed = match fingerprint_file(&ak) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let fps: Vec<_> = listed.iter().map(|l| l.fingerprint).collect();
        assert_eq!(
            fps,
            vec![expected, fingerprint(&other_key().to_public_key())]
        );
        assert_eq!(listed[1].comment.as_deref(), Some("b"));
        let empty = write_file(dir.path(), "empty", "# none\n", 0o644);
        assert!(matches!(
            fingerprint_file(&empty),
            Err(KeyError::NoKeys { .. })
        ));
    }
}
