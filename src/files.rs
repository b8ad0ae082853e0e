//! Writing files so that readers never see half of one, and so that nobody
//! who can write to the folder can redirect the write elsewhere.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many fresh temporary names to try before giving up (a collision
/// of 128 random bits means someone is guessing, not bad luck).
const TEMP_ATTEMPTS: usize = 8;

/// Write `data` to `path` atomically: a new temporary file beside it (a
/// random name, created exclusively, never through a symlink, mode 0600),
/// synced to disk, renamed over `path`, and the folder synced so the rename
/// survives a crash. A symlink at `path` is replaced, not followed. Creates
/// missing parent folders. On error nothing is left behind and `path` is
/// untouched.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let (mut file, tmp) = create_temp(&dir, &name)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp.0, path)?;
    tmp.keep();
    sync_dir(&dir)
}

/// A temporary file's path, removed on drop unless kept (so an error
/// anywhere leaves no stray file).
struct Temp(PathBuf);

impl Temp {
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Temporary files are named `.{name}.{pid}-{random}.tmp`: the random part
/// makes the name unguessable, the writer's pid tells a write under way
/// from one whose process died (see [`remove_stale_temps`]).
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(File, Temp)> {
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = dir.join(format!(
            ".{name}.{}-{}.tmp",
            std::process::id(),
            random_hex()
        ));
        match exclusive(&tmp) {
            Ok(f) => return Ok((f, Temp(tmp))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Create `path`, failing if anything (a file, a symlink, even a dangling
/// one) is already there.
fn exclusive(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // create_new is O_CREAT|O_EXCL, which already refuses a symlink;
        // O_NOFOLLOW says so twice.
        o.mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    o.open(path)
}

/// Remove the temporary files that writes into `dir` left behind when
/// their process died mid-write (`kill -9`, a crash); those of running
/// processes are writes under way and stay. Returns how many went. A
/// missing folder has none.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_writer) else {
            continue;
        };
        if !process_alive(pid) {
            // remove_file removes a symlink itself, never its target.
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The pid in one of our temporary names, `None` for any other name.
fn temp_writer(file: &str) -> Option<u32> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, tag) = rest.rsplit_once('.')?;
    let (pid, hex) = tag.split_once('-')?;
    let ours = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ours.then(|| pid.parse().ok()).flatten()
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        // Without a way to tell, keep it: a stray file beats a broken write.
        true
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has a random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sync the folder, so the rename itself is on disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_write_replaces_the_file_whole_with_mode_0600_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("workers.json");
        // The name earlier versions used for their temporary file.
        symlink(&victim, dir.path().join(".workers.json.tmp")).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("results.jsonl");
        symlink(&victim, &path).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn the_temporary_file_is_never_opened_through_a_symlink_even_a_dangling_one() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("not-yet-there");
        let planted = dir.path().join(".x.tmp");
        symlink(&victim, &planted).unwrap();
        let err = exclusive(&planted).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert!(!victim.exists(), "the symlink was followed");
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, ta) = create_temp(dir.path(), "f").unwrap();
        let (_b, tb) = create_temp(dir.path(), "f").unwrap();
        assert_ne!(ta.0, tb.0);
        let name = ta.0.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".f.") && name.len() > ".f..tmp".len() + 32,
            "{name}"
        );
        assert_eq!(temp_writer(&name), Some(std::process::id()));
        drop((ta, tb));
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_destination_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should go: the rename fails.
        let path = dir.path().join("out");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(
            std::fs::read_to_string(path.join("inside")).unwrap(),
            "kept"
        );
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn temporary_files_of_dead_writers_are_removed_and_those_of_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "0123456789abcdef0123456789abcdef";
        // No process has this pid (above any pid_max).
        let dead = dir.path().join(format!(".16.md.2147483646-{hex}.tmp"));
        let live = dir
            .path()
            .join(format!(".17.md.{}-{hex}.tmp", std::process::id()));
        let other = dir.path().join(".notes.tmp");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // A planted symlink with a dead writer's name: the link goes, not its target.
        let link = dir.path().join(format!(".18.md.2147483646-{hex}.tmp"));
        symlink(&victim, &link).unwrap();
        for f in [&dead, &live, &other] {
            std::fs::write(f, "x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        assert!(!dead.exists() && live.exists() && other.exists());
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(remove_stale_temps(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn missing_folders_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.md");
        write_atomic(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }
}
