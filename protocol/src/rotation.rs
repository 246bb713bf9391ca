//! Certificate rotation without a restart: on SIGHUP a member reloads its
//! certificate and key (`NAME.pem`, `NAME-key.pem`) from its certificates
//! directory into its [`IdentitySlot`]; connections made from then on
//! present the new certificate, existing ones keep the old until they
//! close. A file that does not load (missing, wrong key, another name)
//! is reported and the old certificate stays.

use std::path::PathBuf;
use std::sync::Arc;

use crate::tls::{cert_fingerprint, IdentitySlot, MemberIdentity, TlsError};

/// Loads member `name` from `dir` into `slot`; returns the new
/// certificate's fingerprint.
pub fn reload(slot: &IdentitySlot, dir: &std::path::Path, name: &str) -> Result<String, TlsError> {
    let identity = MemberIdentity::load(dir, name)?;
    slot.replace(&identity)?;
    Ok(cert_fingerprint(identity.cert_der()))
}

/// Reloads on every SIGHUP until the task is dropped (Unix; elsewhere it
/// returns at once).
pub async fn reload_on_sighup(slot: Arc<IdentitySlot>, dir: PathBuf, name: String) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP (no certificate rotation): {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match reload(&slot, &dir, &name) {
                Ok(fp) => tracing::info!(member = %name, sha256 = %fp, "certificate reloaded"),
                Err(e) => {
                    tracing::warn!(member = %name, "certificate not reloaded, keeping the old one: {e}")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (slot, dir, name);
}
