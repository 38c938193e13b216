//! Reading and writing cgroupfs files: one `write(2)` per value, whole reads of
//! `seq_file`s, id lists, and the process-wide count of task migration writes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::failpoint;
use crate::manager::CgroupError;

/// Writes of a pid, a tid or `0` to a `tasks`, `cgroup.procs` or `cgroup.threads` file
/// made by this process through the library (the manager's and the vCPU hooks').
static MIGRATION_WRITES: AtomicU64 = AtomicU64::new(0);

/// How many task migration writes (`tasks`, `cgroup.procs`, `cgroup.threads`) this
/// process has made through the library since it started: one per file written, so
/// placing one thread in the 8 hierarchies of a cgroup v1 host counts 8. Tests and
/// benchmarks read it before and after an operation to count its writes.
pub fn migration_writes() -> u64 {
    MIGRATION_WRITES.load(Ordering::Relaxed)
}

/// Adds `n` to [`migration_writes`].
pub(crate) fn count_migration_writes(n: u64) {
    MIGRATION_WRITES.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn io_err(op: impl Into<String>, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        op: op.into(),
        path: path.into(),
        source,
    }
}

/// Writes `value` to a cgroup file in one write(2), as cgroupfs expects.
pub fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    failpoint::hit(crate::failpoint::Point::FsWrite).map_err(|e| injected(path, e))?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(format!("open {value:?} for writing"), path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io_err(format!("write {value:?} to"), path, e))
}

/// Reads a cgroup file, trimmed.
///
/// # Errors
/// [`CgroupError::Io`] naming `path` when it cannot be opened or read, or does not hold
/// UTF-8 (`ErrorKind::InvalidData`).
pub fn read_file(path: &Path) -> Result<String, CgroupError> {
    read_whole(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_err("read", path, e))
}

/// Size of one `read(2)` of [`read_whole`]: one page, what cgroupfs and sysfs hand out per
/// read at most for most files, and far more than a limit, a cpuset or a short pid list.
const READ_CHUNK: usize = 4096;

/// The whole content of a cgroupfs, sysfs or procfs file, without asking its size:
/// these files report a size of 0 or 4096 whatever they hold, so `read_to_string`'s
/// `statx` buys nothing. Small files take `openat`, one `read`, the `read` that returns 0,
/// `close`. Reads go on until one returns 0, never stopping at a short read: cgroup files
/// are `seq_file`s, which hand out at most their internal buffer (a page at first) per
/// `read`, so a short read is not the end of a `tasks` or `cgroup.procs` holding
/// thousands of ids.
pub(crate) fn read_whole(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(out).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

pub(super) fn read_ids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read_file(path)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// This process's thread ids, from `/proc/self/task`.
pub(super) fn own_threads() -> Result<Vec<i32>, CgroupError> {
    let task = Path::new("/proc/self/task");
    Ok(std::fs::read_dir(task)
        .map_err(|e| io_err("read", task, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Parses `key value` lines (`cpu.stat`, `memory.stat`).
pub(super) fn read_keyed(path: &Path) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(read_file(path)?
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

pub(super) fn injected(path: &Path, e: std::io::Error) -> CgroupError {
    io_err("failpoint at".to_string(), path, e)
}

pub(super) fn map_place_err(
    r: std::io::Result<()>,
    id: i32,
    path: &Path,
) -> Result<(), CgroupError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(CgroupError::NoSuchTask {
            pid: id,
            path: path.into(),
        }),
        Err(e) => Err(io_err(format!("write {id} to"), path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_whole_reads_past_the_first_chunk() {
        // Longer than several chunks, as a `tasks` file with thousands of tids is.
        let want: String = (100_000..108_000).map(|t| format!("{t}\n")).collect();
        assert!(want.len() > 10 * READ_CHUNK);
        let dir = std::env::temp_dir().join(format!("hcg-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("tasks");
        std::fs::write(&f, &want).expect("write");
        let got = read_whole(&f);
        let ids = read_ids(&f);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.expect("read"), want);
        assert_eq!(ids.expect("ids").len(), 8000);
    }

    #[test]
    fn read_file_names_a_missing_file() {
        let p = Path::new("/proc/self/no-such-file");
        match read_file(p) {
            Err(CgroupError::Io { path, source, .. }) => {
                assert_eq!(path, p);
                assert_eq!(source.kind(), ErrorKind::NotFound);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
