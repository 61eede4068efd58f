//! StrictModes, as `sshd` has them: a file that decides who may log in
//! (`authorized_keys`, the config file) must not be writable by anyone but
//! its owner, who must be the user running hytun or root, and the same holds
//! for every directory above it and above a key file, up to `/` (after
//! symlinks are resolved). Whoever can write any of them can swap the keys.
//!
//! One exception, for directories like `/tmp`: a directory with the sticky
//! bit, owned by root or the user, may be writable by others, because the
//! sticky bit stops them from renaming or removing entries they do not own.
//! The decision ([`judge`]) is a pure function of mode, owner and uid,
//! apart from the file-system walk that feeds it.

use std::path::{Path, PathBuf};

use crate::KeyError;

/// What a path is, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// The file itself.
    File,
    /// A directory above it.
    Dir,
}

/// Why a file or directory is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insecurity {
    /// Writable by group or others (the permission bits, `mode & 0o7777`).
    Writable(u32),
    /// Owned by this uid, neither the user nor root.
    Owner(u32),
}

/// Decides whether a file or directory with permission bits `mode` (the
/// full `st_mode` or just `& 0o7777`) owned by `owner` is trusted by the
/// process running as `me`.
pub(crate) fn judge(node: Node, mode: u32, owner: u32, me: u32) -> Result<(), Insecurity> {
    let bits = mode & 0o7777;
    if owner != me && owner != 0 {
        return Err(Insecurity::Owner(owner));
    }
    let sticky = bits & 0o1000 != 0;
    if bits & 0o022 != 0 && !(node == Node::Dir && sticky) {
        return Err(Insecurity::Writable(bits));
    }
    Ok(())
}

/// Checks a file that says who may connect (`authorized_keys`, a config
/// file) and every directory above it.
///
/// # Errors
/// [`KeyError::Insecure`] naming the file or directory and the `chmod` /
/// `chown` to run; [`KeyError::NotFound`] / [`KeyError::Unreadable`] if it
/// cannot be examined.
pub fn check_secure_file(path: &Path) -> Result<(), KeyError> {
    check_path(path, true)
}

/// Checks every directory above a key file (not the file itself, whose own
/// rules are the loader's).
///
/// # Errors
/// As [`check_secure_file`].
pub fn check_secure_dirs(path: &Path) -> Result<(), KeyError> {
    check_path(path, false)
}

#[cfg(unix)]
fn check_path(path: &Path, include_file: bool) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt as _;

    let examine = |p: &Path| {
        std::fs::metadata(p).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyError::NotFound {
                    path: p.to_path_buf(),
                }
            } else {
                KeyError::Unreadable {
                    path: p.to_path_buf(),
                    source,
                }
            }
        })
    };
    let real = std::fs::canonicalize(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            KeyError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let me = rustix::process::getuid().as_raw();
    let insecure = |at: &Path, node: Node, why: Insecurity| KeyError::Insecure {
        path: at.to_path_buf(),
        file: (node == Node::Dir).then(|| path.to_path_buf()),
        why,
        me,
    };
    if include_file {
        let meta = examine(&real)?;
        judge(Node::File, meta.mode(), meta.uid(), me)
            .map_err(|why| insecure(&real, Node::File, why))?;
    }
    let mut dir: Option<PathBuf> = real.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let meta = examine(&d)?;
        judge(Node::Dir, meta.mode(), meta.uid(), me)
            .map_err(|why| insecure(&d, Node::Dir, why))?;
        dir = d.parent().map(Path::to_path_buf);
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_path(_path: &Path, _include_file: bool) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    #[test]
    fn owner_and_root_are_trusted_others_are_not() {
        assert_eq!(judge(Node::File, 0o100644, ME, ME), Ok(()));
        assert_eq!(judge(Node::File, 0o644, 0, ME), Ok(()));
        assert_eq!(
            judge(Node::File, 0o600, 1001, ME),
            Err(Insecurity::Owner(1001))
        );
        assert_eq!(
            judge(Node::Dir, 0o40755, 1001, ME),
            Err(Insecurity::Owner(1001))
        );
    }

    #[test]
    fn group_or_world_writable_is_refused() {
        for mode in [0o664, 0o646, 0o666, 0o620] {
            assert_eq!(
                judge(Node::File, mode, ME, ME),
                Err(Insecurity::Writable(mode))
            );
            assert_eq!(
                judge(Node::Dir, mode | 0o111, ME, ME),
                Err(Insecurity::Writable(mode | 0o111))
            );
        }
        // Readable by all is fine: authorized_keys holds public keys.
        assert_eq!(judge(Node::File, 0o444, ME, ME), Ok(()));
    }

    #[test]
    fn sticky_directories_like_tmp_are_trusted() {
        assert_eq!(judge(Node::Dir, 0o41777, 0, ME), Ok(()));
        assert_eq!(judge(Node::Dir, 0o1777, ME, ME), Ok(()));
        // ...but not when someone else owns them, and never for files.
        assert_eq!(
            judge(Node::Dir, 0o1777, 1001, ME),
            Err(Insecurity::Owner(1001))
        );
        assert_eq!(
            judge(Node::File, 0o1666, ME, ME),
            Err(Insecurity::Writable(0o1666))
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_walk_finds_a_writable_file_or_directory() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt as _;

        let chmod = |p: &Path, mode: u32| {
            if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(mode)) {
                panic!("chmod {}: {e}", p.display());
            }
        };
        let top = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let sub = top.path().join("keys");
        if let Err(e) = fs::create_dir(&sub) {
            panic!("mkdir: {e}");
        }
        chmod(&sub, 0o700);
        let file = sub.join("authorized_keys");
        if let Err(e) = fs::write(&file, "x") {
            panic!("write: {e}");
        }
        chmod(&file, 0o644);
        assert!(check_secure_file(&file).is_ok());

        chmod(&file, 0o664);
        let err = match check_secure_file(&file) {
            Err(e) => e,
            Ok(()) => panic!("group-writable file accepted"),
        };
        let shown = err.to_string();
        assert!(shown.contains("writable by group or others"), "{shown}");
        assert!(shown.contains("chmod go-w"), "{shown}");
        // The directory walk alone does not look at the file.
        assert!(check_secure_dirs(&file).is_ok());
        chmod(&file, 0o600);

        chmod(&sub, 0o777);
        for result in [check_secure_file(&file), check_secure_dirs(&file)] {
            match result {
                Err(KeyError::Insecure {
                    path,
                    file: Some(f),
                    why: Insecurity::Writable(0o777),
                    ..
                }) => {
                    assert!(path.ends_with("keys"), "{}", path.display());
                    assert_eq!(f, file);
                }
                other => panic!("expected the directory to be refused, got {other:?}"),
            }
        }
        // The sticky bit makes it acceptable, like /tmp.
        chmod(&sub, 0o1777);
        assert!(check_secure_file(&file).is_ok());
        chmod(&sub, 0o700);
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let top = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        assert!(matches!(
            check_secure_file(&top.path().join("nope")),
            Err(KeyError::NotFound { .. })
        ));
    }
}
