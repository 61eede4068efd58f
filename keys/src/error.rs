//! The single error type of `hytun-keys`. Every variant that concerns a file
//! carries its path (and, for parse errors, the 1-based line number) so the
//! message shown to the operator says exactly which file to fix and how.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::strict::Insecurity;

/// Which kind of key a loader expected to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A private key (`.key` file).
    Private,
    /// A public key (`.pub` file or `authorized_keys` entry).
    Public,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Private => f.write_str("an RSA private key"),
            Self::Public => f.write_str("an RSA public key"),
        }
    }
}

/// Everything that can go wrong generating, writing or loading keys.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// `generate` was asked for a size other than 2048, 3072 or 4096 bits.
    UnsupportedGenerateBits {
        /// The requested size.
        bits: usize,
    },
    /// Key generation itself failed (e.g. the OS random source failed).
    Generate {
        /// What the RSA library reported.
        reason: String,
    },
    /// The key name given to `write_keypair` is not a plain file name.
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// A key file exists and `force` was not set.
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating a directory or writing a file failed.
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Serialising a key to PEM failed.
    Encode {
        /// The file the key was meant for.
        path: PathBuf,
        /// What the encoder reported.
        reason: String,
    },
    /// The key file does not exist.
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The file exists but could not be opened or read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is larger than any key file could reasonably be.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A private key file is readable or writable by group or others.
    PermissionsTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// The file is not PEM text, or text outside the PEM blocks is not a comment.
    NotPem {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when the whole file is at fault).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A PEM block holds something other than the expected kind of key.
    WrongKind {
        /// The file.
        path: PathBuf,
        /// 1-based line of the `-----BEGIN` line.
        line: usize,
        /// The PEM label found (e.g. `PUBLIC KEY`).
        found: String,
        /// What the caller needed.
        expected: KeyKind,
    },
    /// The private key is password-protected, which hytun does not support.
    Encrypted {
        /// The file.
        path: PathBuf,
        /// 1-based line of the `-----BEGIN` line.
        line: usize,
    },
    /// The PEM block decoded but its contents are not a valid RSA key.
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line of the `-----BEGIN` line.
        line: usize,
        /// What the decoder reported.
        reason: String,
    },
    /// The key is valid RSA but its modulus size is outside 2048..=4096 bits.
    UnsupportedSize {
        /// The file.
        path: PathBuf,
        /// 1-based line of the `-----BEGIN` line.
        line: usize,
        /// The modulus size found.
        bits: usize,
    },
    /// A single-key file holds more than one PEM block.
    MultipleKeys {
        /// The file.
        path: PathBuf,
        /// 1-based line of the second `-----BEGIN` line.
        line: usize,
    },
    /// The file holds no PEM block at all (only comments or nothing).
    NoKeys {
        /// The file.
        path: PathBuf,
    },
    /// StrictModes: a file that says who may connect, or a directory above
    /// it or above a key, can be changed by someone other than the user
    /// running hytun or root.
    Insecure {
        /// The file or directory at fault.
        path: PathBuf,
        /// When `path` is a directory: the file below it that was loaded.
        file: Option<PathBuf>,
        /// What is wrong with it.
        why: Insecurity,
        /// The uid hytun runs as.
        me: u32,
    },
    /// An OpenSSH public key line of a type other than `ssh-rsa`.
    UnsupportedOpenSsh {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key type found (e.g. `ssh-ed25519`).
        kind: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedGenerateBits { bits } => write!(
                f,
                "unsupported RSA key size {bits} bits: choose 2048, 3072 or 4096"
            ),
            Self::Generate { reason } => write!(f, "RSA key generation failed: {reason}"),
            Self::InvalidName { name } => write!(
                f,
                "invalid key name '{name}': use a plain file name without '/' (e.g. 'server')"
            ),
            Self::AlreadyExists { path } => write!(
                f,
                "'{}' already exists; refusing to overwrite it (use --force to replace it)",
                path.display()
            ),
            Self::Write { path, source } => {
                write!(f, "cannot write '{}': {source}", path.display())
            }
            Self::Encode { path, reason } => {
                write!(f, "cannot encode key for '{}': {reason}", path.display())
            }
            Self::NotFound { path } => write!(f, "key file '{}' does not exist", path.display()),
            Self::Unreadable { path, source } => {
                write!(f, "cannot read '{}': {source}", path.display())
            }
            Self::TooLarge { path, limit } => write!(
                f,
                "'{}' is larger than {limit} bytes; it is not a key file",
                path.display()
            ),
            Self::PermissionsTooOpen { path, mode } => write!(
                f,
                "permissions {mode:04o} for '{p}' are too open: a private key must not be \
                 accessible by group or others; run chmod 600 {p}",
                p = path.display()
            ),
            Self::NotPem { path, line, reason } => {
                if *line == 0 {
                    write!(f, "'{}' is not a PEM key file: {reason}", path.display())
                } else {
                    write!(
                        f,
                        "'{}' line {line}: not a PEM key file: {reason}",
                        path.display()
                    )
                }
            }
            Self::WrongKind {
                path,
                line,
                found,
                expected,
            } => {
                let p = path.display();
                let found_private = found.contains("PRIVATE KEY");
                let found_public = found.contains("PUBLIC KEY") || found == "ssh-rsa";
                let found = if found == "ssh-rsa" {
                    "an OpenSSH ssh-rsa line".to_string()
                } else {
                    format!("BEGIN {found}")
                };
                match expected {
                    KeyKind::Public if found_private => write!(
                        f,
                        "'{p}' line {line}: this is a private key ({found}); \
                         pass the public key (.pub) file instead"
                    ),
                    KeyKind::Private if found_public => write!(
                        f,
                        "'{p}' line {line}: this is a public key ({found}); \
                         pass the private key (.key) file instead"
                    ),
                    _ if found.starts_with("BEGIN ") => write!(
                        f,
                        "'{p}' line {line}: found a '{}' PEM block, expected {expected}",
                        &found["BEGIN ".len()..]
                    ),
                    _ => write!(f, "'{p}' line {line}: found {found}, expected {expected}"),
                }
            }
            Self::Encrypted { path, line } => write!(
                f,
                "'{}' line {line}: the private key is password-protected, which hytun does \
                 not support; decrypt it with `openssl pkey -in KEY -out KEY.plain`",
                path.display()
            ),
            Self::Malformed { path, line, reason } => write!(
                f,
                "'{}' line {line}: invalid key data: {reason}",
                path.display()
            ),
            Self::UnsupportedSize { path, line, bits } => write!(
                f,
                "'{}' line {line}: {bits}-bit RSA key not supported; use a key of 2048 to \
                 4096 bits",
                path.display()
            ),
            Self::MultipleKeys { path, line } => write!(
                f,
                "'{}' line {line}: a second key starts here, but this file must hold exactly \
                 one key",
                path.display()
            ),
            Self::NoKeys { path } => write!(
                f,
                "'{}' holds no PEM key (only comments or blank lines)",
                path.display()
            ),
            Self::Insecure {
                path,
                file,
                why,
                me,
            } => {
                let p = path.display();
                match file {
                    None => write!(f, "'{p}'")?,
                    Some(file) => write!(f, "directory '{p}' above '{}'", file.display())?,
                }
                match why {
                    Insecurity::Writable(mode) => write!(
                        f,
                        " is writable by group or others (mode {mode:04o}), who could change \
                         which keys are trusted; run chmod go-w {p}"
                    ),
                    Insecurity::Owner(uid) => write!(
                        f,
                        " is owned by uid {uid}, neither you (uid {me}) nor root, who could \
                         change which keys are trusted; run chown {me} {p} (as root)"
                    ),
                }
            }
            Self::UnsupportedOpenSsh { path, line, kind } => write!(
                f,
                "'{}' line {line}: {kind} keys are not supported: hytun uses RSA keys of 2048 \
                 to 4096 bits (ssh-rsa lines or PEM); make one with `hytun keygen` or \
                 `ssh-keygen -t rsa -b 3072`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Write { source, .. } | Self::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn too_open_message_matches_openssh_style() {
        let e = KeyError::PermissionsTooOpen {
            path: Path::new("x.key").to_path_buf(),
            mode: 0o644,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("permissions 0644 for 'x.key' are too open"),
            "{s}"
        );
        assert!(s.ends_with("run chmod 600 x.key"), "{s}");
    }

    #[test]
    fn wrong_kind_gives_a_hint_in_both_directions() {
        let private_given = KeyError::WrongKind {
            path: "a.key".into(),
            line: 1,
            found: "PRIVATE KEY".into(),
            expected: KeyKind::Public,
        };
        assert!(
            private_given
                .to_string()
                .contains("pass the public key (.pub) file")
        );
        let public_given = KeyError::WrongKind {
            path: "a.pub".into(),
            line: 3,
            found: "PUBLIC KEY".into(),
            expected: KeyKind::Private,
        };
        let s = public_given.to_string();
        assert!(s.contains("'a.pub' line 3"), "{s}");
        assert!(s.contains("pass the private key (.key) file"), "{s}");
    }

    #[test]
    fn io_errors_expose_their_source() {
        use std::error::Error as _;
        let e = KeyError::Unreadable {
            path: "k".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(e.source().is_some());
        assert!(e.to_string().starts_with("cannot read 'k': "));
    }
}
