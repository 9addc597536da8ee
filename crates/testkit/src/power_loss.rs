//! Power loss, simulated: what a directory tree would hold after the machine lost
//! power at some moment, given what the processes writing it made durable.
//!
//! A process killed with SIGKILL loses nothing the kernel already has: its unsynced
//! writes stay in the page cache and a later process reads them. A power loss loses
//! all of them. So the processes under test run with `crashsim/crashsim.c` preloaded
//! (`LD_PRELOAD`), which records, at every `fsync`, `fdatasync`, `syncfs` or `sync`
//! that succeeds on a file or directory below the watched root, a copy of what that
//! call made durable: the file's bytes, or the directory's entries. The model is the
//! strict one POSIX promises: a file's bytes are durable from its last successful
//! fsync (or fdatasync), a name in a directory (created, renamed, linked or removed)
//! from its directory's last successful fsync, and nothing else is — not a rename
//! without a directory fsync, not `O_DIRECT` data without an fsync (the device's
//! cache is volatile), not anything a process wrote before it exited. The starting
//! state (the tree when [`PowerLoss::watch`] is called) counts as durable.
//!
//! The record is an append-only log, so every prefix of it is a moment the power could
//! have gone: [`PowerLoss::mark`] names the moment now, and
//! [`PowerLoss::rebuild`] writes the tree as it would be found after a power loss at
//! a mark into a new directory — starting from the root's durable entries, each
//! directory with its last recorded entries (a directory created but never synced is
//! empty), each file with its last recorded bytes (a file never synced is empty).
//!
//! What the model does not cover: data lost by a sync that reported success (a lying
//! disk), torn writes inside a synced file, and a write that races with the sync of
//! the same file (counted as not durable). File systems usually keep more than this
//! model (ext4 orders a rename after its data by default): a test passing here holds
//! on them too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::FixtureError;
use crate::process::run;

/// The shim's source, compiled in so the build needs only gcc.
const SOURCE: &str = include_str!("../crashsim/crashsim.c");
/// How to get the compiler.
const GCC_HINT: &str = "apt-get install gcc";

/// A directory tree watched for what would survive a power loss.
pub struct PowerLoss {
    root: PathBuf,
    /// Holds the shim, its copies and its log; removed when dropped.
    dir: tempfile::TempDir,
}

/// A moment the power could have gone: a length of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

impl PowerLoss {
    /// Builds the shim with `gcc` and records `root` (an existing directory) as it is
    /// now as the durable starting state.
    pub fn watch(root: &Path) -> Result<Self, FixtureError> {
        let root = root.canonicalize().map_err(FixtureError::io(format!(
            "cannot resolve {}",
            root.display()
        )))?;
        let dir = tempfile::Builder::new()
            .prefix("haven-power-loss-")
            .tempdir()
            .map_err(FixtureError::io("cannot create the power-loss folder"))?;
        let source = dir.path().join("crashsim.c");
        std::fs::write(&source, SOURCE).map_err(FixtureError::io("cannot write crashsim.c"))?;
        let gcc = |output: &str, extra: &[&str]| {
            run(
                Command::new("gcc")
                    .args(["-Wall", "-Wextra", "-Werror", "-O2", "-o", output])
                    .args(extra)
                    .arg(&source)
                    .arg("-ldl"),
                GCC_HINT,
            )
        };
        gcc(
            &dir.path().join("crashsim.so").to_string_lossy(),
            &["-shared", "-fPIC"],
        )?;
        gcc(
            &dir.path().join("crashsim").to_string_lossy(),
            &["-DCRASHSIM_MAIN"],
        )?;
        std::fs::create_dir(dir.path().join("copies"))
            .map_err(FixtureError::io("cannot create the copies folder"))?;
        let watched = Self { root, dir };
        run(
            Command::new(watched.dir.path().join("crashsim"))
                .env("CRASHSIM_DIR", watched.copies())
                .arg("base")
                .arg(&watched.root),
            GCC_HINT,
        )?;
        Ok(watched)
    }

    fn copies(&self) -> PathBuf {
        self.dir.path().join("copies")
    }

    fn log(&self) -> PathBuf {
        self.copies().join("log")
    }

    /// The environment that makes a process record what it makes durable below the
    /// root.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |path: PathBuf| path.to_string_lossy().into_owned();
        vec![
            (
                "LD_PRELOAD".into(),
                path(self.dir.path().join("crashsim.so")),
            ),
            ("CRASHSIM_DIR".into(), path(self.copies())),
            ("CRASHSIM_ROOT".into(), path(self.root.clone())),
        ]
    }

    /// Makes `command` record what it makes durable below the root.
    pub fn preload<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.envs(self.env())
    }

    /// The moment now: a power loss here keeps what was made durable so far.
    pub fn mark(&self) -> Mark {
        Mark(std::fs::metadata(self.log()).map_or(0, |meta| meta.len()))
    }

    /// How many syncs were recorded up to `mark` (the starting state's included).
    pub fn syncs_until(&self, mark: Mark) -> Result<usize, FixtureError> {
        Ok(self.log_until(mark)?.lines().count())
    }

    fn log_until(&self, mark: Mark) -> Result<String, FixtureError> {
        let log = std::fs::read(self.log()).map_err(FixtureError::io("cannot read the log"))?;
        let end = usize::try_from(mark.0).unwrap_or(usize::MAX).min(log.len());
        // A mark is taken between appends, each one whole line.
        Ok(String::from_utf8_lossy(&log[..end]).into_owned())
    }

    /// Every mark at which a sync was recorded, up to `until`: the moments a power
    /// loss leaves a different tree.
    pub fn marks_until(&self, until: Mark) -> Result<Vec<Mark>, FixtureError> {
        let log = self.log_until(until)?;
        let mut end = 0u64;
        Ok(log
            .split_inclusive('\n')
            .map(|line| {
                end += line.len() as u64;
                Mark(end)
            })
            .collect())
    }

    /// Writes into `into` (which must not exist) the tree a power loss at `mark`
    /// leaves under the root.
    pub fn rebuild(&self, mark: Mark, into: &Path) -> Result<(), FixtureError> {
        let log = self.log_until(mark)?;
        let mut root = None;
        let mut files = HashMap::new();
        let mut dirs = HashMap::new();
        for line in log.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["R", ino, btime] => root = Some(format!("{ino}\t{btime}")),
                ["F", ino, btime, copy] => {
                    keep_newest(&mut files, format!("{ino}\t{btime}"), PathBuf::from(copy));
                }
                ["D", ino, btime, copy] => {
                    keep_newest(&mut dirs, format!("{ino}\t{btime}"), PathBuf::from(copy));
                }
                _ => {
                    return Err(FixtureError::Io {
                        context: format!("crashsim log line {line:?}"),
                        source: std::io::Error::other("not a log line"),
                    });
                }
            }
        }
        let root = root.ok_or_else(|| FixtureError::Io {
            context: "crashsim log".into(),
            source: std::io::Error::other("no root recorded"),
        })?;
        Tree {
            files: &files,
            dirs: &dirs,
        }
        .write_dir(&root, into)
    }
}

/// Records `copy` as what is durable of file or directory `id`, unless a copy taken
/// later is recorded already. Two syncs of one directory can run at once (two writers
/// renaming into it) and return in the other order: the log then holds the newer
/// listing before the older one, and both syncs returned, so the newer listing is
/// durable; taking the last line would lose an entry a writer was told is durable.
fn keep_newest(copies: &mut HashMap<String, PathBuf>, id: String, copy: PathBuf) {
    match copies.get(&id) {
        Some(kept) if captured_at(kept) > captured_at(&copy) => {}
        _ => {
            copies.insert(id, copy);
        }
    }
}

/// When a copy was taken: crashsim names each copy `KIND-PID-N-TIME`, TIME the
/// wall-clock seconds followed by nine digits of nanoseconds at the capture.
fn captured_at(copy: &Path) -> u128 {
    copy.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.rsplit('-').next())
        .and_then(|time| time.parse().ok())
        .unwrap_or(0)
}

/// The durable copies, by file identity (inode and birth time).
struct Tree<'a> {
    files: &'a HashMap<String, PathBuf>,
    dirs: &'a HashMap<String, PathBuf>,
}

impl Tree<'_> {
    fn write_dir(&self, id: &str, into: &Path) -> Result<(), FixtureError> {
        std::fs::create_dir(into).map_err(FixtureError::io(format!(
            "cannot create {}",
            into.display()
        )))?;
        let Some(listing) = self.dirs.get(id) else {
            return Ok(());
        };
        let listing = std::fs::read_to_string(listing).map_err(FixtureError::io(format!(
            "cannot read {}",
            listing.display()
        )))?;
        for entry in listing.lines() {
            let Some((name, ino, btime, kind)) = split4(entry) else {
                return Err(FixtureError::Io {
                    context: format!("crashsim listing line {entry:?}"),
                    source: std::io::Error::other("not an entry"),
                });
            };
            let child = format!("{ino}\t{btime}");
            let path = into.join(name);
            match kind {
                "d" => self.write_dir(&child, &path)?,
                "f" => match self.files.get(&child) {
                    Some(copy) => {
                        std::fs::copy(copy, &path).map_err(FixtureError::io(format!(
                            "cannot copy to {}",
                            path.display()
                        )))?;
                    }
                    None => {
                        std::fs::File::create(&path).map_err(FixtureError::io(format!(
                            "cannot create {}",
                            path.display()
                        )))?;
                    }
                },
                _ => {}
            }
        }
        Ok(())
    }
}

fn split4(line: &str) -> Option<(&str, &str, &str, &str)> {
    let mut fields = line.rsplitn(4, '\t');
    let kind = fields.next()?;
    let btime = fields.next()?;
    let ino = fields.next()?;
    let name = fields.next()?;
    Some((name, ino, btime, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_syncs_returning_out_of_order_the_newer_capture_is_kept() {
        let older = PathBuf::from("/c/D-7-3-1765000000000000100");
        let newer = PathBuf::from("/c/D-7-4-1765000000000000200");
        let mut copies = HashMap::new();
        // Logged in the order the syncs returned: the newer capture first.
        keep_newest(&mut copies, "12\t1.2.3".into(), newer.clone());
        keep_newest(&mut copies, "12\t1.2.3".into(), older.clone());
        assert_eq!(copies["12\t1.2.3"], newer);
        let mut copies = HashMap::new();
        keep_newest(&mut copies, "12\t1.2.3".into(), older);
        keep_newest(&mut copies, "12\t1.2.3".into(), newer.clone());
        assert_eq!(copies["12\t1.2.3"], newer);
    }

    /// The model on a script whose outcome is known: only synced bytes and entries of
    /// synced directories survive, at each moment.
    #[test]
    fn only_what_was_synced_survives() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("old"), b"before").unwrap();
        let watched = PowerLoss::watch(&root).unwrap();
        let script = r#"
import os, sys
root = sys.argv[1]
def sync(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
def write(name, data, fsync):
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
write("synced", b"durable", True)
write("unsynced", b"lost", False)
os.mkdir(os.path.join(root, "sub"))
write("sub/inner", b"inner", True)
sync(root)
print("first", flush=True)
sys.stdin.readline()
write("late", b"late", True)
os.rename(os.path.join(root, "synced"), os.path.join(root, "renamed"))
with open(os.path.join(root, "old"), "ab") as f:
    f.write(b" and after")
    f.flush()
    os.fsync(f.fileno())
"#;
        let mut child = watched
            .preload(Command::new("python3").args(["-c", script]).arg(&root))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line, "first\n");
        let first = watched.mark();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        assert!(child.wait().unwrap().success());
        let last = watched.mark();

        let read = |tree: &Path, name: &str| std::fs::read(tree.join(name)).ok();
        let at_first = dir.path().join("at-first");
        watched.rebuild(first, &at_first).unwrap();
        assert_eq!(read(&at_first, "old").as_deref(), Some(&b"before"[..]));
        assert_eq!(read(&at_first, "synced").as_deref(), Some(&b"durable"[..]));
        // Its name is durable (the directory was synced), its bytes are not.
        assert_eq!(read(&at_first, "unsynced").as_deref(), Some(&b""[..]));
        // A new directory whose own entries were never synced is empty.
        assert!(at_first.join("sub").is_dir());
        assert_eq!(read(&at_first, "sub/inner"), None);

        let at_last = dir.path().join("at-last");
        watched.rebuild(last, &at_last).unwrap();
        // The rename and the new name were never synced in the directory: the old
        // name stays, the new ones are not there; the append to `old` was synced.
        assert_eq!(read(&at_last, "synced").as_deref(), Some(&b"durable"[..]));
        assert_eq!(read(&at_last, "renamed"), None);
        assert_eq!(read(&at_last, "late"), None);
        assert_eq!(
            read(&at_last, "old").as_deref(),
            Some(&b"before and after"[..])
        );
        assert!(watched.syncs_until(last).unwrap() > watched.syncs_until(first).unwrap());
        assert_eq!(watched.marks_until(last).unwrap().last(), Some(&last));
    }
}
