//! The cluster's first admin key. A coordinator configured with
//! `bootstrap = true` reads its admin key file (making it, mode 0600, with
//! a new key when missing) and proposes [`Op::Bootstrap`] until the key is
//! in the replicated state, or the state says the cluster was bootstrapped
//! already (then the file's key is not registered, and a warning says so).
//! Several coordinators may bootstrap from the same file: the first
//! proposal commits, the others find the key there.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::admin::{commit, Admin};
use super::wire::WriteReply;
use super::ServerError;
use crate::auth::{hash_key, new_key};
use crate::state::Op;

/// Shortest secret accepted from a key file.
const MIN_SECRET_LEN: usize = 16;

/// How often registration is retried while there is no leader.
const RETRY: Duration = Duration::from_millis(300);

fn config_error(path: &Path, reason: String) -> ServerError {
    ServerError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

/// The secret in `path`, after making the file with a new key when it
/// does not exist.
pub fn load_or_create(path: &Path) -> Result<String, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_string();
            if secret.len() < MIN_SECRET_LEN || secret.chars().any(char::is_whitespace) {
                return Err(config_error(
                    path,
                    format!("the admin key file must hold one key of at least {MIN_SECRET_LEN} characters"),
                ));
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = new_key();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| config_error(path, e.to_string()))?;
            }
            let mut f = open_private(path).map_err(|e| config_error(path, e.to_string()))?;
            writeln!(f, "{}", key.secret).map_err(|e| config_error(path, e.to_string()))?;
            Ok(key.secret)
        }
        Err(e) => Err(config_error(path, e.to_string())),
    }
}

/// Creates `path` readable by its owner only.
pub fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Registers `secret` as the first admin key; returns once it is in the
/// state or cannot be.
pub async fn register(admin: Arc<Admin>, secret: String) {
    let hash = hash_key(&secret);
    let id = format!("key-admin-{}", &hash[..8]);
    loop {
        {
            let view = admin.view.borrow();
            if view.state.api_key(&hash).is_some() {
                tracing::info!(key = %id, "bootstrap admin key registered");
                return;
            }
            if view.state.bootstrapped() {
                tracing::warn!(
                    "the cluster was bootstrapped with another admin key; this coordinator's \
                     admin key file is not registered"
                );
                return;
            }
        }
        let op = Op::Bootstrap {
            key_hash: hash.clone(),
            id: id.clone(),
            created_at_unix: crate::openai::unix_now(),
        };
        match commit(&admin, op).await {
            WriteReply::Applied(_) => {
                tracing::info!(key = %id, "cluster bootstrapped: admin key registered");
                return;
            }
            WriteReply::Rejected { message, .. } => {
                // Another coordinator may have bootstrapped with this same
                // key meanwhile: the check above tells, once applied here.
                tokio::time::sleep(RETRY).await;
                if admin.view.borrow().state.api_key(&hash).is_none() {
                    tracing::warn!("bootstrap refused: {message}");
                    return;
                }
            }
            WriteReply::NotLeader { .. } | WriteReply::Unavailable { .. } => {
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_private_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.key");
        let a = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
