//! Secrets (API keys) live in the OS keychain or the environment, never in
//! config files or logs. This module is the only place that reads them.

use crate::config::SecretRef;

/// Keychain service name under which Baton stores its entries.
pub const SERVICE: &str = "baton";

/// Keychain entry holding the key clients must present to the balancer.
pub const BALANCER_KEY_ENTRY: &str = "balancer-api-key";

/// Environment variable that overrides the balancer key in the keychain.
pub const BALANCER_KEY_ENV: &str = "BATON_API_KEY";

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
    /// The user (or a policy) refused Baton the entry: not "missing", and
    /// asking again at once would only prompt again.
    #[error(
        "the keychain denied Baton access to `{0}` (service `baton`)\n  fix: open Baton again and choose Always Allow when macOS asks, or allow it in Keychain Access (the entry's Access Control)"
    )]
    Denied(String),
}

/// Read the secret a reference points at.
pub fn resolve(r: &SecretRef) -> Result<String, SecretError> {
    match r {
        SecretRef::Env(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::EnvMissing(var.clone())),
        SecretRef::Keychain(name) => get(name),
    }
}

/// On Linux the kernel keyring stands in for the keychain. A process that
/// did not start in a login session (a service, CI, a container) cannot use
/// the default session keyring, so every Baton process joins one named
/// `baton`, linked into the user's keyring so it outlives the process: what
/// `baton key set` stores, `baton serve` finds.
#[cfg(target_os = "linux")]
fn join_keyring() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
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
    });
}

fn entry(name: &str) -> Result<keyring::Entry, SecretError> {
    #[cfg(target_os = "linux")]
    join_keyring();
    keyring::Entry::new(SERVICE, name).map_err(|e| SecretError::Keychain {
        name: name.to_string(),
        detail: e.to_string(),
    })
}

/// Read a keychain entry.
pub fn get(name: &str) -> Result<String, SecretError> {
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

/// Store a keychain entry.
pub fn set(name: &str, value: &str) -> Result<(), SecretError> {
    entry(name)?
        .set_password(value)
        .map_err(|e| SecretError::Keychain {
            name: name.to_string(),
            detail: e.to_string(),
        })
}

/// Delete a keychain entry; deleting a missing one is not an error.
pub fn delete(name: &str) -> Result<(), SecretError> {
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
    match get(BALANCER_KEY_ENTRY) {
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
