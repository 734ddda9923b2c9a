//! Emptied workspaces kept for the next attempt. Making a folder allocates an inode and
//! removing one frees it; at hundreds of jobs a second that was the agent's largest cost
//! (on ext4 without a journal each new inode is checked against every one freed in the
//! last seconds). An ended attempt's workspace is emptied instead, set back to the
//! owner and mode it was made with, and parked under `workspaces/.free/`; the next
//! attempt renames it into place. A workspace that cannot be put back exactly as a new
//! one would be (another owner, extended attributes such as ACLs, something that cannot
//! be removed) is removed as before. Jobs of one agent run as one user and can already
//! reach each other's workspaces, so a reused folder opens nothing new between them.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use drover_core::files::META_DIR;

/// Owner, group and mode of a folder as the agent makes it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Made {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Made {
    fn of(meta: &std::fs::Metadata) -> Made {
        Made {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// The agent's parked workspaces (blocking methods: call them on a blocking thread).
#[derive(Debug)]
pub struct WorkspacePool {
    dir: PathBuf,
    capacity: usize,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    /// How the agent makes a workspace and its `.drover` folder, read off the first one
    /// it made.
    made: OnceLock<(Made, Made)>,
}

impl WorkspacePool {
    /// A pool under `workspaces_dir/.free` keeping at most `capacity` workspaces (none:
    /// every workspace is removed). Whatever an earlier run parked there is removed.
    pub fn new(workspaces_dir: &Path, capacity: usize) -> WorkspacePool {
        let dir = workspaces_dir.join(".free");
        let _ = std::fs::remove_dir_all(&dir);
        // Made once here; should that fail, parking fails and workspaces are removed.
        let _ = std::fs::create_dir_all(&dir);
        WorkspacePool {
            dir,
            capacity,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            made: OnceLock::new(),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `workspace` an empty folder with an empty `.drover` folder in it, from a
    /// parked one when there is one.
    pub fn make(&self, workspace: &Path) -> io::Result<()> {
        let parked = self.free().pop();
        if let Some(parked) = parked {
            if std::fs::rename(&parked, workspace).is_ok() {
                return Ok(());
            }
            let _ = std::fs::remove_dir_all(&parked);
        }
        match std::fs::remove_dir_all(workspace) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let meta = workspace.join(META_DIR);
        std::fs::create_dir_all(&meta)?;
        if self.made.get().is_none() {
            let made = (
                Made::of(&std::fs::symlink_metadata(workspace)?),
                Made::of(&std::fs::symlink_metadata(&meta)?),
            );
            let _ = self.made.set(made);
        }
        Ok(())
    }

    /// Parks an ended attempt's workspace for the next one, or removes it.
    pub fn recycle(&self, workspace: &Path) -> io::Result<()> {
        if self.free().len() < self.capacity {
            if let Some(&made) = self.made.get() {
                if empty_as_made(workspace, made).is_ok() {
                    let parked = self
                        .dir
                        .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
                    if std::fs::rename(workspace, &parked).is_ok() {
                        self.free().push(parked);
                        return Ok(());
                    }
                }
            }
        }
        std::fs::remove_dir_all(workspace)
    }
}

/// Empties `workspace` but for its `.drover` folder, itself emptied, and gives both the
/// owner and mode they were made with; an error when that cannot be done exactly.
fn empty_as_made(workspace: &Path, (ws, meta): (Made, Made)) -> io::Result<()> {
    reset(workspace, ws)?;
    let mut has_meta = false;
    for entry in std::fs::read_dir(workspace)? {
        let entry = entry?;
        if entry.file_name() == META_DIR && entry.file_type()?.is_dir() {
            has_meta = true;
            reset(&entry.path(), meta)?;
            for inner in std::fs::read_dir(entry.path())? {
                remove(&inner?)?;
            }
        } else {
            remove(&entry)?;
        }
    }
    match has_meta {
        true => Ok(()),
        false => Err(io::Error::other("the .drover folder is gone")),
    }
}

/// Gives a folder the owner's mode it was made with; an error when it has another owner
/// or extended attributes (an ACL would change what the next job's files allow).
fn reset(dir: &Path, made: Made) -> io::Result<()> {
    let now = std::fs::symlink_metadata(dir)?;
    if !now.is_dir() || now.uid() != made.uid || now.gid() != made.gid {
        return Err(io::Error::other("not the folder the agent made"));
    }
    if has_xattrs(dir)? {
        return Err(io::Error::other("the folder has extended attributes"));
    }
    if now.mode() & 0o7777 != made.mode {
        std::fs::set_permissions(dir, Permissions::from_mode(made.mode))?;
    }
    Ok(())
}

/// Removes a file, link or folder (a link is removed, never followed: the entry's type
/// is the link's own).
fn remove(entry: &std::fs::DirEntry) -> io::Result<()> {
    match entry.file_type()?.is_dir() {
        true => std::fs::remove_dir_all(entry.path()),
        false => std::fs::remove_file(entry.path()),
    }
}

/// Whether the folder has extended attributes other than security labels (which
/// SELinux puts on every file): ACLs, or `user.` attributes a job set.
fn has_xattrs(path: &Path) -> io::Result<bool> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) => return Ok(false),
        Ok(n) => n,
        // A file system without extended attributes has none.
        Err(rustix::io::Errno::NOTSUP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // Room for one more attribute set meanwhile; one set beyond that fails the call.
    let mut names = vec![0u8; size + 256];
    let n = rustix::fs::llistxattr(path, &mut names[..])?;
    Ok(names[..n]
        .split(|b| *b == 0)
        .any(|name| !name.is_empty() && !name.starts_with(b"security.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_workspace_is_emptied_and_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let pool = WorkspacePool::new(dir.path(), 2);
        let (a, b) = (dir.path().join("a-1"), dir.path().join("b-1"));
        pool.make(&a).unwrap();
        let inode = std::fs::metadata(&a).unwrap().ino();
        std::fs::write(a.join("out.txt"), "x").unwrap();
        std::fs::create_dir_all(a.join("deep/er")).unwrap();
        std::fs::write(a.join(META_DIR).join("result.json"), "{}").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("kept"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, a.join("link")).unwrap();
        std::fs::set_permissions(&a, Permissions::from_mode(0o700)).unwrap();
        pool.recycle(&a).unwrap();
        assert!(!a.exists());
        pool.make(&b).unwrap();
        assert_eq!(
            std::fs::metadata(&b).unwrap().ino(),
            inode,
            "the same folder"
        );
        let names: Vec<_> = std::fs::read_dir(&b)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [META_DIR]);
        assert_eq!(std::fs::read_dir(b.join(META_DIR)).unwrap().count(), 0);
        let made = pool.made.get().unwrap().0;
        assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o7777, made.mode);
        assert!(
            outside.join("kept").exists(),
            "links are removed, not followed"
        );
    }

    #[test]
    fn a_workspace_not_as_made_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = WorkspacePool::new(dir.path(), 2);
        let a = dir.path().join("a-1");
        pool.make(&a).unwrap();
        // Without its .drover folder it is not what a new workspace looks like.
        std::fs::remove_dir(a.join(META_DIR)).unwrap();
        pool.recycle(&a).unwrap();
        assert!(!a.exists());
        assert!(pool.free().is_empty());
        // Nor is one with an attribute a job set.
        let x = dir.path().join("x-1");
        pool.make(&x).unwrap();
        rustix::fs::lsetxattr(
            &x,
            "user.note",
            b"from job x",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("the test's file system takes user attributes");
        pool.recycle(&x).unwrap();
        assert!(!x.exists() && pool.free().is_empty());
        // A full pool removes.
        let full = WorkspacePool::new(&dir.path().join("other"), 0);
        let b = dir.path().join("b-1");
        full.make(&b).unwrap();
        full.recycle(&b).unwrap();
        assert!(!b.exists() && full.free().is_empty());
    }
}
