//! A keychain of its own for a test: the test runs again in a child
//! process inside a new user namespace, where the kernel keeps separate
//! keyrings (Baton's named session keyring and the persistent keyring
//! included), so nothing it stores or moves touches the user's keys or
//! other tests', and it all goes when the namespace does.

/// Set in the child to the name of the test it runs.
const MARK: &str = "BATON_TEST_THROWAWAY_KEYRING";

/// Call first in a test that uses the keychain, with the test's name. In
/// the child (with its own keyrings) it returns `true`: go on with the
/// test. In the parent it runs the child, fails if the child failed, and
/// returns `false`: return at once.
#[cfg(target_os = "linux")]
pub fn in_throwaway_keyring(test: &str) -> bool {
    use std::os::unix::process::CommandExt;

    if std::env::var(MARK).is_ok_and(|m| m == test || m.ends_with(&format!("::{test}"))) {
        return true;
    }
    // The child runs exactly this test: by its full path in this binary
    // (`module::name`, libtest's name for the test's thread).
    let current = super::skip::current_test();
    let test = if current.ends_with(&format!("::{test}")) {
        current.as_str()
    } else {
        test
    };
    // SAFETY: plain getters without side effects.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Formatted before the fork: the child may only make system calls.
    let uid_map = format!("{uid} {uid} 1");
    let gid_map = format!("{gid} {gid} 1");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(MARK, test);
    // SAFETY: the closure only calls async-signal-safe functions (unshare,
    // open, write, close) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The same ids inside as outside, so files stay ours.
            write_proc(c"/proc/self/setgroups", b"deny")?;
            write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
            write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            super::skip::skip_test(format!(
                "cannot create a user namespace for a throwaway keyring: {e}"
            ));
            return false;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test} failed in its throwaway keyring:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in the child:\n{text}"
    );
    false
}

#[cfg(target_os = "linux")]
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path and a buffer of the given length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n != data.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
