//! Generating RSA keys and writing a key pair to disk. The private key is
//! written as PKCS#8 PEM to `NAME.key` with mode 0600, the public key as SPKI
//! PEM to `NAME.pub` with mode 0644. Each file is first written and synced
//! under a unique temporary name in the target directory (created with its
//! final mode, so the secret is never world-readable, even briefly) and then
//! renamed into place, so a crash never leaves a half-written key behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

use crate::{KeyError, RsaPrivateKey};

/// The modulus sizes [`generate`] accepts.
pub const SUPPORTED_GENERATE_BITS: [usize; 3] = [2048, 3072, 4096];

/// Where [`write_keypair`] put the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// `DIR/NAME.key`, PKCS#8 PEM, mode 0600.
    pub private: PathBuf,
    /// `DIR/NAME.pub`, SPKI PEM, mode 0644.
    pub public: PathBuf,
}

/// Generates a new RSA key (public exponent 65537) using the OS RNG.
///
/// # Errors
/// [`KeyError::UnsupportedGenerateBits`] unless `bits` is 2048, 3072 or 4096;
/// [`KeyError::Generate`] if the random source or the generator fails.
pub fn generate(bits: usize) -> Result<RsaPrivateKey, KeyError> {
    if !SUPPORTED_GENERATE_BITS.contains(&bits) {
        return Err(KeyError::UnsupportedGenerateBits { bits });
    }
    RsaPrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| KeyError::Generate {
        reason: e.to_string(),
    })
}

/// Writes `DIR/NAME.key` and `DIR/NAME.pub`, creating `DIR` (mode 0700) if
/// it does not exist.
///
/// # Errors
/// Refuses to replace either file unless `force` ([`KeyError::AlreadyExists`]
/// names the file); rejects a `name` that is not a plain file name; reports
/// I/O failures with the path involved.
pub fn write_keypair(
    dir: &Path,
    name: &str,
    key: &RsaPrivateKey,
    force: bool,
) -> Result<KeyPaths, KeyError> {
    validate_name(name)?;
    let paths = KeyPaths {
        private: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    };
    if !force {
        for path in [&paths.private, &paths.public] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(KeyError::AlreadyExists { path: path.clone() });
            }
        }
    }

    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode {
            path: paths.private.clone(),
            reason: e.to_string(),
        })?;
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode {
            path: paths.public.clone(),
            reason: e.to_string(),
        })?;

    create_dir(dir)?;
    let private_tmp = write_temp(dir, name, private_pem.as_bytes(), 0o600)?;
    let public_tmp = match write_temp(dir, name, public_pem.as_bytes(), 0o644) {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_file(&private_tmp);
            return Err(e);
        }
    };
    let renamed = fs::rename(&private_tmp, &paths.private)
        .map_err(|e| (paths.private.clone(), e))
        .and_then(|()| {
            fs::rename(&public_tmp, &paths.public).map_err(|e| (paths.public.clone(), e))
        });
    if let Err((path, source)) = renamed {
        let _ = fs::remove_file(&private_tmp);
        let _ = fs::remove_file(&public_tmp);
        return Err(KeyError::Write { path, source });
    }
    // Make the renames durable; failure here does not invalidate the files.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(paths)
}

fn validate_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidName {
            name: name.to_string(),
        })
    }
}

#[cfg(unix)]
fn create_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn create_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a fresh, uniquely named file in `dir` with `mode` and
/// syncs it; returns its path.
fn write_temp(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, KeyError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let write_err = |source: io::Error| KeyError::Write {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(mode);
        }
        let mut file = match options.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1;
                continue;
            }
            Err(e) => return Err(write_err(e)),
        };
        let result = set_mode(&file, mode)
            .and_then(|()| file.write_all(bytes))
            .and_then(|()| file.sync_all());
        if let Err(e) = result {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(write_err(e));
        }
        return Ok(path);
    }
}

/// Sets the exact mode (the umask may have removed bits at creation).
#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{other_key, test_key};
    use crate::{load_private_key, load_public_key};

    fn tempdir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        }
    }

    #[test]
    fn generate_rejects_unsupported_sizes() {
        for bits in [0, 1024, 2047, 2049, 8192] {
            assert!(matches!(
                generate(bits),
                Err(KeyError::UnsupportedGenerateBits { bits: b }) if b == bits
            ));
        }
        assert_eq!(crate::key_bits(test_key().as_public_key()), 2048);
    }

    #[cfg(unix)]
    #[test]
    fn files_get_0600_and_0644_and_dir_0700() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempdir();
        let dir = root.path().join("new").join("keys");
        let paths = match write_keypair(&dir, "id", test_key(), false) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let mode = |p: &Path| match fs::metadata(p) {
            Ok(m) => m.permissions().mode() & 0o777,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(mode(&paths.private), 0o600);
        assert_eq!(mode(&paths.public), 0o644);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(paths.private, dir.join("id.key"));
        assert_eq!(paths.public, dir.join("id.pub"));
        // No temporary files are left behind.
        let entries = match fs::read_dir(&dir) {
            Ok(r) => r.count(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(entries, 2);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempdir();
        if let Err(e) = write_keypair(dir.path(), "srv", test_key(), false) {
            panic!("{e}");
        }
        let err = match write_keypair(dir.path(), "srv", other_key(), false) {
            Err(e) => e,
            Ok(_) => panic!("overwrote without --force"),
        };
        let shown = err.to_string();
        assert!(shown.contains("srv.key"), "{shown}");
        assert!(shown.contains("--force"), "{shown}");
        // Only the .pub existing is enough to refuse.
        let only_pub = dir.path().join("solo.pub");
        if let Err(e) = fs::write(&only_pub, "x") {
            panic!("{e}");
        }
        assert!(matches!(
            write_keypair(dir.path(), "solo", test_key(), false),
            Err(KeyError::AlreadyExists { path }) if path == only_pub
        ));
        // The original key is untouched.
        assert!(matches!(load_private_key(&dir.path().join("srv.key")), Ok(k) if &k == test_key()));
    }

    #[test]
    fn force_replaces_both_files() {
        let dir = tempdir();
        if let Err(e) = write_keypair(dir.path(), "srv", test_key(), false) {
            panic!("{e}");
        }
        let paths = match write_keypair(dir.path(), "srv", other_key(), true) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert!(matches!(load_private_key(&paths.private), Ok(k) if &k == other_key()));
        assert!(
            matches!(load_public_key(&paths.public), Ok(k) if k == other_key().to_public_key())
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = tempdir();
        for name in ["", ".", "..", "a/b", ".hidden", "x\\y"] {
            assert!(
                matches!(
                    write_keypair(dir.path(), name, test_key(), false),
                    Err(KeyError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
    }
}
