//! Process limits: the open-files limit, raised as far as the system lets.
//! Each waiting client and each studio connection is a socket, and an app
//! started by launchd gets a soft limit of 256, so without this the
//! balancer fails with "Too many open files" beyond ~100 clients.

/// Raise the soft open-files limit to the hard one (on macOS also to
/// `kern.maxfilesperproc`, as the rlimit crate does); the limits before and
/// after.
pub fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let (before, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_files_limit_never_goes_down() {
        let (before, after) = super::raise_open_files().unwrap();
        assert!(after >= before, "{before} -> {after}");
        let (now, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(now, after);
    }
}
