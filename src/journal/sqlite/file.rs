//! The journal as a file on disk: how it is opened (by `serve`, which may create it and
//! holds it exclusively, or by a CLI command, which may not create it), and how the daemon
//! notices that the file under it was removed or replaced, or that commits fail.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::super::JournalError;

/// Who opens the journal, which decides what the open may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `freshet serve`: creates the journal if needed, holds it exclusively for the life
    /// of the process, and refuses a file that fails `PRAGMA quick_check`.
    Serve,
    /// A CLI command: the journal must exist (a mistyped path must not create an empty
    /// journal and report "no events").
    Command,
    /// Tests and tools: creates the journal if needed, takes no lock.
    Any,
}

/// A SQLite error at open, as the cause an operator can act on, naming the path.
pub fn open_error(path: &Path, error: &dyn std::fmt::Display) -> JournalError {
    let text = error.to_string();
    let message = if path.is_dir() {
        "it is a folder: set journal.path to a file's path (such as journal.db in that folder)"
            .to_string()
    } else if text.contains("unable to open database file")
        || text.contains("Permission denied")
        || text.contains("readonly")
    {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        format!(
            "cannot read or write it: check that the user running freshet may write {} and the folder {}",
            path.display(),
            folder.display()
        )
    } else if text.contains("file is not a database") || text.contains("malformed") {
        "it is not a freshet journal, or it is corrupt: restore it from a backup, or move it aside to start with an empty journal".to_string()
    } else {
        text
    };
    JournalError::Open {
        path: path.display().to_string(),
        message,
    }
}

/// Creates a new journal file readable and writable by its owner only (0600), before
/// SQLite opens it: SQLite gives its `-wal` and `-shm` files the same mode. An existing
/// file is left as it is.
pub fn create_private(path: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(open_error(path, &error)),
    }
}

/// Creates the journal's folder, saying which part of the path is in the way.
pub fn create_folder(path: &Path) -> Result<(), JournalError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    // The journal holds webhook bodies and action results: readable by its owner only
    // (docs/behaviour.md section 17), whatever the umask.
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|error| {
            let blocker = parent
                .ancestors()
                .find(|p| !p.as_os_str().is_empty() && p.exists() && !p.is_dir());
            let message = match blocker {
                Some(file) => format!(
                    "{} is a file, not a folder: set journal.path to a path in a folder",
                    file.display()
                ),
                None if error.kind() == std::io::ErrorKind::PermissionDenied => format!(
                    "cannot create the folder {}: permission denied",
                    parent.display()
                ),
                None => format!("cannot create the folder {}: {error}", parent.display()),
            };
            JournalError::Open {
                path: path.display().to_string(),
                message,
            }
        })
}

/// The journal exists (for [`Opener::Command`]).
pub fn ensure_exists(path: &Path) -> Result<(), JournalError> {
    if path.is_file() {
        return Ok(());
    }
    Err(JournalError::Open {
        path: path.display().to_string(),
        message: "no journal there: `freshet serve` creates it on its first start; check journal.path in the config (or --config)".into(),
    })
}

/// `PRAGMA quick_check` at the start of `serve` (docs/behaviour.md section 11): a corrupt journal
/// is refused with a clear error instead of failing webhooks one by one later.
pub fn quick_check(conn: &rusqlite::Connection, path: &Path) -> Result<(), JournalError> {
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|error| open_error(path, &error))?;
    if verdict == "ok" {
        return Ok(());
    }
    Err(JournalError::Open {
        path: path.display().to_string(),
        message: format!(
            "it failed its integrity check ({verdict}): restore it from a backup, or move it aside to start with an empty journal"
        ),
    })
}

/// Reads the journal file once from start to end, so that [`quick_check`] finds it in the
/// page cache. The check reads every page in B-tree order, which on a journal just
/// after a reboot is a random read per page; one sequential read first makes a start
/// several times faster on a large journal (bench/README.md has the figures). Skipped for a
/// journal too large to stay in memory (it would only push itself out before the check reads it)
/// and when that cannot be known; a failed read only costs the speed-up, the check itself reports
/// any real problem. Returns how many bytes it read.
///
/// Call it before SQLite opens the file: closing any descriptor of a file releases all the
/// POSIX locks the process holds on it, and SQLite's would go with it (another process,
/// a CLI command, could then take the journal for unused and rebuild its WAL index).
pub fn read_ahead(path: &Path) -> u64 {
    let Ok(mut file) = File::open(path) else {
        return 0;
    };
    let fits = match (file.metadata(), std::fs::read_to_string("/proc/meminfo")) {
        (Ok(metadata), Ok(meminfo)) => fits_in_memory(metadata.len(), &meminfo),
        _ => false,
    };
    if !fits {
        return 0;
    }
    let mut buffer = vec![0u8; 256 << 10];
    let mut read = 0;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return read,
            Ok(n) => read += n as u64,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return read,
        }
    }
}

/// Whether a file of `size` bytes can be read into the page cache and stay there while
/// the check reads it: at most half the memory `/proc/meminfo` says is available.
fn fits_in_memory(size: u64, meminfo: &str) -> bool {
    mem_available(meminfo).is_some_and(|available| size <= available / 2)
}

/// The `MemAvailable` line of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let amount: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => amount.checked_mul(1024),
        _ => None,
    }
}

/// The exclusive hold of `serve` on a SQLite journal: an OS lock (`flock`) on
/// `<journal>.lock`, held for the life of the process and released by the kernel when
/// it ends, however it ends, so a kill -9 never leaves a stale lock. The file holds the
/// holder's pid, for the message a second `serve` prints.
pub struct ServeLock {
    _file: File,
}

impl ServeLock {
    pub fn acquire(journal: &Path) -> Result<ServeLock, JournalError> {
        let path = lock_path(journal);
        let fail = |message: String| JournalError::Open {
            path: journal.display().to_string(),
            message,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| fail(format!("cannot create {}: {error}", path.display())))?;
        // SAFETY: flock takes a file descriptor we own and flags; it touches no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(fail(format!(
                "another `freshet serve` (pid {}) holds it; one serve per SQLite journal (several instances share a PostgreSQL journal)",
                if holder.is_empty() { "unknown" } else { holder }
            )));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(error) = written {
            return Err(fail(format!("cannot write {}: {error}", path.display())));
        }
        Ok(ServeLock { _file: file })
    }
}

fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Device and inode: what says "this is the same file" across renames and unlinks.
type Identity = (u64, u64);

fn identity(path: &Path) -> Option<Identity> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Watches over the open journal file and its write-ahead log: whether they are still
/// the files at their paths, and how the last commit went. `/healthz` and intake read
/// it; commits write it.
pub struct FileWatch {
    path: PathBuf,
    opened: Option<Identity>,
    /// `<journal>-wal`: SQLite keeps writing to the log it opened even once its path is
    /// removed, and a start after a crash reads the log at the path, so commits in a
    /// removed log would be lost (docs/behaviour.md section 11).
    wal_path: PathBuf,
    wal_opened: Option<Identity>,
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    /// Set once the path no longer names the file we hold: nothing written from then on
    /// would be in the journal the next start opens.
    gone: Option<String>,
    /// The error of the last commit, while it is the latest outcome.
    last_commit_error: Option<String>,
    /// Set when the write-ahead log was found removed or replaced, until the caller has
    /// copied what it holds into the journal file ([`FileWatch::wal_rescue_due`]).
    wal_rescue: bool,
}

impl FileWatch {
    /// Notes the identity of the file just opened at `path`, and of its write-ahead log
    /// (which SQLite has made by then: opening runs reads in WAL mode).
    pub fn new(path: &Path) -> FileWatch {
        let mut wal_path = path.as_os_str().to_os_string();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        FileWatch {
            path: path.to_path_buf(),
            opened: identity(path),
            wal_opened: identity(&wal_path),
            wal_path,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails if the file was already found gone.
    pub fn ensure_present(&self) -> Result<(), JournalError> {
        match &self.state().gone {
            Some(message) => Err(JournalError::commit_failed(message)),
            None => Ok(()),
        }
    }

    /// Looks at the paths again (two `stat`s): fails, for good, if the journal file or
    /// its write-ahead log there is not the one we opened. Called after each commit and
    /// before answering for it, so a commit that landed in a removed file is never
    /// acknowledged.
    pub fn verify(&self) -> Result<(), JournalError> {
        self.ensure_present()?;
        if identity(&self.path) != self.opened {
            let message = format!(
                "the journal file {} was removed or replaced while freshet ran; restart freshet (what was committed since is in the old file only)",
                self.path.display()
            );
            tracing::error!(journal = %self.path.display(), "The journal file was removed or replaced; refusing webhooks until a restart.");
            self.state().gone = Some(message.clone());
            return Err(JournalError::commit_failed(message));
        }
        if self.wal_opened.is_some() && identity(&self.wal_path) != self.wal_opened {
            let message = format!(
                "the journal's write-ahead log {} was removed or replaced while freshet ran; what it held was copied into the journal; restart freshet",
                self.wal_path.display()
            );
            tracing::error!(wal = %self.wal_path.display(), "The journal's write-ahead log was removed or replaced; copying it into the journal and refusing webhooks until a restart.");
            let mut state = self.state();
            state.gone = Some(message.clone());
            state.wal_rescue = true;
            return Err(JournalError::commit_failed(message));
        }
        Ok(())
    }

    /// True once after the write-ahead log was found gone: the caller, holding the
    /// writer, then checkpoints the log it still has open into the journal file, so what
    /// was acknowledged before survives even a crash (a start reads the file at the path).
    pub fn wal_rescue_due(&self) -> bool {
        std::mem::take(&mut self.state().wal_rescue)
    }

    /// Records how a commit went.
    pub fn committed(&self, outcome: &Result<(), String>) {
        self.state().last_commit_error = outcome.as_ref().err().cloned();
    }

    /// The last commit's error, if the last commit failed.
    pub fn last_commit_error(&self) -> Option<String> {
        self.state().last_commit_error.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_read_from_meminfo_in_bytes() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(mem_available(meminfo), Some(20_480_000 * 1024));
        assert_eq!(mem_available("MemTotal: 10 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        assert_eq!(mem_available("MemAvailable: 10 pages\n"), None);
        assert!(fits_in_memory(10_000 * 1024, meminfo));
        assert!(!fits_in_memory(10_240_001 * 1024, meminfo));
        assert!(!fits_in_memory(1, "MemTotal: 10 kB\n"));
    }

    #[test]
    fn a_journal_that_fits_in_memory_is_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        // Larger than the read buffer, so that the read goes round its loop.
        std::fs::write(&path, vec![7u8; (256 << 10) * 3 + 5]).unwrap();
        assert_eq!(read_ahead(&path), (256 << 10) * 3 + 5);
        assert_eq!(read_ahead(&dir.path().join("missing.db")), 0);
    }
}
