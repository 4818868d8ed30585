//! A container's root filesystem on the host: containerd's rootfs mounts
//! (an overlay of the image's snapshot) mounted at `BUNDLE/rootfs`.

use crate::error::ShimError;
use std::path::{Path, PathBuf};

/// Mounts containerd's rootfs mounts at `BUNDLE/rootfs` (nothing to do when
/// the list is empty: the rootfs is already there).
pub fn mount(
    id: &str,
    bundle: &Path,
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<Option<PathBuf>, ShimError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| ShimError::Io {
        id: id.into(),
        context: format!("creating {}", target.display()),
        source: e,
    })?;
    for m in mounts {
        if let Err(e) = containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &target) {
            unmount(&target);
            return Err(ShimError::Io {
                id: id.into(),
                context: format!("mounting {} {} at {}", m.type_, m.source, target.display()),
                source: std::io::Error::other(e.to_string()),
            });
        }
    }
    Ok(Some(target))
}

pub fn unmount(target: &Path) {
    for _ in 0..16 {
        if nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}
