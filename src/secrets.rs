//! Secrets (API keys) live in the OS keychain or the environment, never in
//! config files or logs. This module is the only place that reads them.

use crate::config::SecretRef;

/// Keychain service name under which Baton stores its entries.
pub const SERVICE: &str = "baton";

/// Environment variable that overrides the balancer key in the keychain.
pub const BALANCER_KEY_ENV: &str = "BATON_API_KEY";

/// Workers' keys live under this prefix (`worker/<name>`), so no worker's
/// key can ever be, or replace, one of Baton's own.
const WORKER_PREFIX: &str = "worker/";

/// Baton's own secrets, in their own namespace (`baton/...`): a worker's
/// reference can never name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// The control API's per-install token.
    ControlToken,
    /// The key clients must present to the balancer.
    BalancerKey,
}

impl Own {
    pub const ALL: [Own; 2] = [Own::ControlToken, Own::BalancerKey];

    /// The keychain entry.
    pub fn entry(self) -> &'static str {
        match self {
            Own::ControlToken => "baton/control-token",
            Own::BalancerKey => "baton/balancer-key",
        }
    }

    /// Where earlier versions kept it (moved on first read).
    pub fn legacy_entry(self) -> &'static str {
        match self {
            Own::ControlToken => "control-token",
            Own::BalancerKey => "balancer-api-key",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Own::ControlToken => "the control API's token",
            Own::BalancerKey => "the balancer's API key",
        }
    }

    /// The secret a name means, by its current or its earlier entry name.
    pub fn named(name: &str) -> Option<Own> {
        Own::ALL
            .into_iter()
            .find(|o| o.entry() == name || o.legacy_entry() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "environment variable {0} is not set (or is empty); export it, or store the key in the keychain with `baton key set`"
    )]
    EnvMissing(String),
    #[error("no keychain entry `{0}` (service `baton`); store it with `baton key set {0}`")]
    NotInKeychain(String),
    #[error("keychain error for entry `{name}`: {detail}")]
    Keychain { name: String, detail: String },
    #[error("{0}")]
    Refused(String),
    /// The user (or a policy) refused Baton the entry: not "missing", and
    /// asking again at once would only prompt again.
    #[error(
        "the keychain denied Baton access to `{0}` (service `baton`)\n  fix: open Baton again and choose Always Allow when macOS asks, or allow it in Keychain Access (the entry's Access Control)"
    )]
    Denied(String),
}

/// Read the secret a worker's reference points at.
pub fn resolve(r: &SecretRef) -> Result<String, SecretError> {
    match r {
        SecretRef::Env(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::EnvMissing(var.clone())),
        SecretRef::Keychain(name) => get_worker(name),
    }
}

/// A worker's key entry name must be a valid name and none of Baton's own
/// (the loader refuses those too; this guards every other way in).
fn worker_entry(name: &str) -> Result<String, SecretError> {
    if let Some(own) = Own::named(name) {
        return Err(SecretError::Refused(format!(
            "`{name}` is Baton's own keychain entry ({}), not a worker's\n  fix: store the studio's key under its own name, e.g. `baton key set mac-studio-1`",
            own.describe()
        )));
    }
    crate::config::check_name(name).map_err(|problem| {
        SecretError::Refused(format!(
            "keychain entry name {name:?} {problem}\n  fix: use 1 to {} letters, digits, '.', '_' or '-', e.g. \"{}\"",
            crate::config::MAX_ID_LEN,
            crate::config::suggest_name(name)
        ))
    })?;
    Ok(format!("{WORKER_PREFIX}{name}"))
}

/// A worker's key, by the name its reference gives (`worker/<name>` in
/// the keychain; an entry kept under the bare name by earlier versions is
/// moved there on first read).
pub fn get_worker(name: &str) -> Result<String, SecretError> {
    let entry = worker_entry(name)?;
    read_migrating(&entry, name, name)
}

/// Store a worker's key under `worker/<name>`.
pub fn set_worker(name: &str, value: &str) -> Result<(), SecretError> {
    set(&worker_entry(name)?, value)
}

/// Delete a worker's key (and any copy an earlier version kept).
pub fn delete_worker(name: &str) -> Result<(), SecretError> {
    delete(&worker_entry(name)?)?;
    delete(name)
}

/// One of Baton's own secrets (an entry from an earlier version is moved
/// to the new name on first read).
pub fn get_own(own: Own) -> Result<String, SecretError> {
    read_migrating(own.entry(), own.legacy_entry(), own.entry())
}

pub fn set_own(own: Own, value: &str) -> Result<(), SecretError> {
    set(own.entry(), value)
}

/// Delete one of Baton's own secrets (and the copy an earlier version kept).
pub fn delete_own(own: Own) -> Result<(), SecretError> {
    delete(own.entry())?;
    delete(own.legacy_entry())
}

/// Read `entry`; when it is missing, move `legacy` there (copy, then
/// delete the old one) so users of earlier versions keep their keys.
/// `shown` names the entry in a "not stored" error.
fn read_migrating(entry: &str, legacy: &str, shown: &str) -> Result<String, SecretError> {
    match get(entry) {
        Ok(v) => return Ok(v),
        Err(SecretError::NotInKeychain(_)) => {}
        Err(e) => return Err(e),
    }
    match get(legacy) {
        Ok(v) => {
            match set(entry, &v) {
                Ok(()) => {
                    if let Err(e) = delete(legacy) {
                        tracing::debug!("could not remove the old keychain entry: {e}");
                    }
                    tracing::info!("moved keychain entry `{legacy}` to `{entry}`");
                }
                // The old entry still works; the move is tried again next time.
                Err(e) => tracing::debug!("could not move the old keychain entry: {e}"),
            }
            Ok(v)
        }
        Err(SecretError::NotInKeychain(_)) => Err(SecretError::NotInKeychain(shown.to_string())),
        Err(e) => Err(e),
    }
}

/// On Linux the kernel keyring stands in for the keychain. A process that
/// did not start in a login session (a service, CI, a container) cannot use
/// the default session keyring, so every Baton process joins one named
/// `baton`, linked into the user's keyring so it outlives the process: what
/// `baton key set` stores, `baton serve` finds. A session keyring belongs
/// to a thread's credentials, not to the process (a thread that existed
/// before another joined keeps its old one), so each thread joins before
/// its first use.
#[cfg(target_os = "linux")]
fn join_keyring() {
    thread_local! {
        static JOINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if JOINED.replace(true) {
        return;
    }
    {
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        const KEYCTL_LINK: libc::c_long = 8;
        const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
        // SAFETY: keyctl with a NUL-terminated name and integer ids; no
        // memory is shared with the kernel beyond the name.
        unsafe {
            let id = libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                c"baton".as_ptr(),
            );
            if id >= 0 {
                libc::syscall(libc::SYS_keyctl, KEYCTL_LINK, id, KEY_SPEC_USER_KEYRING);
            } else {
                tracing::debug!(
                    "could not join a session keyring: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn entry(name: &str) -> Result<keyring::Entry, SecretError> {
    #[cfg(target_os = "linux")]
    join_keyring();
    keyring::Entry::new(SERVICE, name).map_err(|e| SecretError::Keychain {
        name: name.to_string(),
        detail: e.to_string(),
    })
}

/// Read a keychain entry by its full name.
fn get(name: &str) -> Result<String, SecretError> {
    match entry(name)?.get_password() {
        Ok(v) => Ok(v),
        Err(keyring::Error::NoEntry) => Err(SecretError::NotInKeychain(name.to_string())),
        Err(e) if denied(&e) => Err(SecretError::Denied(name.to_string())),
        Err(e) => Err(SecretError::Keychain {
            name: name.to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Whether a keychain status code means "access refused": the user chose
/// Deny or cancelled the prompt (`errSecAuthFailed` -25293,
/// `errSecUserCanceled` -128; Security framework's SecBase.h). keyring
/// 3.6.3 (`src/macos.rs`, `decode_error`) passes both on as a
/// `PlatformFailure` around security-framework's error, like any failure.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn is_denial(status: i32) -> bool {
    matches!(status, -25293 | -128)
}

fn denied(e: &keyring::Error) -> bool {
    #[cfg(target_os = "macos")]
    if let keyring::Error::PlatformFailure(inner) = e
        && let Some(sf) = inner.downcast_ref::<security_framework::base::Error>()
    {
        return is_denial(sf.code());
    }
    #[cfg(not(target_os = "macos"))]
    let _ = e;
    false
}

/// Store a keychain entry by its full name.
fn set(name: &str, value: &str) -> Result<(), SecretError> {
    entry(name)?
        .set_password(value)
        .map_err(|e| SecretError::Keychain {
            name: name.to_string(),
            detail: e.to_string(),
        })
}

/// Delete a keychain entry; deleting a missing one is not an error.
fn delete(name: &str) -> Result<(), SecretError> {
    match entry(name)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(SecretError::Keychain {
            name: name.to_string(),
            detail: e.to_string(),
        }),
    }
}

/// The key clients must send to the balancer: `BATON_API_KEY`, else the
/// keychain entry. `None` when neither is set.
pub fn balancer_key() -> Result<Option<String>, SecretError> {
    if let Ok(v) = std::env::var(BALANCER_KEY_ENV)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    match get_own(Own::BalancerKey) {
        Ok(v) => Ok(Some(v)),
        Err(SecretError::NotInKeychain(_)) => Ok(None),
        // No usable keychain (e.g. a headless box without a session keyring)
        // means no key from there; the caller explains how to provide one.
        Err(SecretError::Keychain { detail, .. }) => {
            tracing::debug!("keychain unavailable: {detail}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_or_cancelled_prompt_is_denial_and_other_failures_are_not() {
        assert!(is_denial(-25293)); // errSecAuthFailed: "Deny"
        assert!(is_denial(-128)); // errSecUserCanceled
        assert!(!is_denial(-25300)); // errSecItemNotFound
        assert!(!is_denial(-25308)); // errSecInteractionNotAllowed: no UI to ask
        assert!(!is_denial(-25291)); // errSecNotAvailable
        let e = SecretError::Denied("balancer-api-key".into()).to_string();
        assert!(e.contains("denied") && e.contains("\n  fix: "), "{e}");
        assert!(!e.contains("needs an API key"));
    }
}
