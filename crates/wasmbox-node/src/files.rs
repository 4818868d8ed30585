//! Files as the installer writes them: whole or not at all (a temporary
//! file in the same directory, synced, then renamed over the old one, so a
//! process that has the old one open, a running shim included, keeps it),
//! with the old file's mode and owner.

use crate::error::Error;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = std::fs::File::open(path).map_err(Error::io("reading", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The file's bytes, or None if there is no such file.
pub fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { action: "reading", path: path.to_path_buf(), source: e }),
    }
}

/// Mode and owner a written file takes.
#[derive(Debug, Clone, Copy)]
pub struct Attrs {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

impl Attrs {
    /// Those of `path` if it exists, else `mode` and the writer's owner.
    pub fn of_or(path: &Path, mode: u32) -> Attrs {
        match std::fs::metadata(path) {
            Ok(m) => Attrs { mode: m.permissions().mode() & 0o7777, owner: Some((m.uid(), m.gid())) },
            Err(_) => Attrs { mode, owner: None },
        }
    }
}

fn temp_beside(path: &Path) -> Result<PathBuf, Error> {
    let name =
        path.file_name().ok_or_else(|| Error::unsupported(path, "not a file name"))?.to_string_lossy().into_owned();
    Ok(path.with_file_name(format!(".{name}.wasmbox-tmp-{}", std::process::id())))
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("syncing the directory", dir))
}

/// Writes the temporary file with `fill`, syncs it, checks it with `check`
/// and renames it to `path`; the temporary file is removed on failure.
fn replace_with(
    path: &Path,
    attrs: Attrs,
    fill: impl FnOnce(&mut std::fs::File, &Path) -> Result<(), Error>,
    check: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let tmp = temp_beside(path)?;
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(attrs.mode)
            .open(&tmp)
            .map_err(Error::io("creating", &tmp))?;
        fill(&mut file, &tmp)?;
        // The mode as asked, whatever the umask; the old file's owner.
        file.set_permissions(std::fs::Permissions::from_mode(attrs.mode))
            .map_err(Error::io("setting the mode of", &tmp))?;
        if let Some((uid, gid)) = attrs.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(Error::io("setting the owner of", &tmp))?;
        }
        file.sync_all().map_err(Error::io("syncing", &tmp))?;
        drop(file);
        check(&tmp)?;
        std::fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path)
}

/// Replaces (or creates) `path` with `bytes`, atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], attrs: Attrs) -> Result<(), Error> {
    replace_with(path, attrs, |f, tmp| f.write_all(bytes).map_err(Error::io("writing", tmp)), |_| Ok(()))
}

/// Copies `src` to `dst` atomically, checking the copy's SHA-256 against
/// `want` before it replaces anything.
pub fn copy_verified(src: &Path, dst: &Path, want: &str, attrs: Attrs) -> Result<(), Error> {
    replace_with(
        dst,
        attrs,
        |f, tmp| {
            let mut from = std::fs::File::open(src).map_err(Error::io("reading", src))?;
            std::io::copy(&mut from, f).map(|_| ()).map_err(Error::io("writing", tmp))
        },
        |tmp| {
            let got = sha256_file(tmp)?;
            if got == want {
                Ok(())
            } else {
                Err(Error::CopyMismatch { path: dst.to_path_buf(), got, want: want.to_string() })
            }
        },
    )
}

/// Removes `path`; a file already gone is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { action: "removing", path: path.to_path_buf(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replacing_keeps_the_old_inode_for_whoever_has_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim");
        std::fs::write(&path, b"old program").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        let old_ino = std::fs::metadata(&path).unwrap().ino();
        let mut open = std::fs::File::open(&path).unwrap();
        let src = dir.path().join("new");
        std::fs::write(&src, b"new program").unwrap();
        copy_verified(&src, &path, &sha256(b"new program"), Attrs::of_or(&path, 0o755)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_ne!(meta.ino(), old_ino, "the file was rewritten in place");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        let mut old = String::new();
        open.read_to_string(&mut old).unwrap();
        assert_eq!(old, "old program");
        assert_eq!(std::fs::read(&path).unwrap(), b"new program");
        // Nothing but the two files is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_copy_that_does_not_match_is_removed_and_the_old_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim");
        std::fs::write(&path, b"old").unwrap();
        let src = dir.path().join("new");
        std::fs::write(&src, b"new").unwrap();
        let err = copy_verified(&src, &path, &sha256(b"something else"), Attrs::of_or(&path, 0o755)).unwrap_err();
        assert!(matches!(err, Error::CopyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("shim"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
