//! `inferno certs`: create the cluster certificate authority and issue member
//! certificates for mutual TLS between coordinators, nodes and clients.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use protocol::tls::{
    cert_dns_names, cert_fingerprint, read_cert_file, CertRole, ClusterCa, MemberIdentity,
    CA_CERT_FILE, CA_KEY_FILE,
};

/// `inferno certs` subcommands.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca-key.pem) in a directory.
    Init(InitArgs),
    /// Issue a member certificate (NAME.pem, NAME-key.pem, plus ca.pem) signed by the CA.
    Issue(IssueArgs),
    /// Revoke a member certificate cluster-wide (needs an admin key of tenant default).
    Revoke(RevokeArgs),
}

/// Arguments of `inferno certs init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to write the CA into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Common name of the CA certificate.
    #[arg(long, default_value = "Inferno cluster CA")]
    pub name: String,
    /// Replace an existing CA in the directory.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `inferno certs issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Directory holding the CA (ca.pem, ca-key.pem).
    #[arg(long)]
    pub ca: PathBuf,
    /// Member name: the certificate's DNS name, which peers connect to.
    #[arg(long)]
    pub name: String,
    /// Directory to write the member's files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// What the member is: coordinators take raft and peer traffic only
    /// from coordinator certificates, nodes take work only from them.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Replace an existing certificate of this member in the directory.
    #[arg(long)]
    pub force: bool,
}

/// The role written into a certificate.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum RoleArg {
    /// A coordinator.
    Coordinator,
    /// A worker node.
    Node,
}

impl From<RoleArg> for CertRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Coordinator => CertRole::Coordinator,
            RoleArg::Node => CertRole::Node,
        }
    }
}

/// Arguments of `inferno certs revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: crate::admin_api::Target,
    /// The member certificate to revoke (NAME.pem).
    #[arg(long)]
    pub cert: PathBuf,
}

/// Revokes a certificate through the admin API; prints its name and
/// fingerprint.
pub fn revoke(args: &RevokeArgs) -> anyhow::Result<()> {
    let cert = read_cert_file(&args.cert)
        .with_context(|| format!("cannot read a certificate from {}", args.cert.display()))?;
    let name = cert_dns_names(&cert)
        .context("cannot read the certificate's name")?
        .into_iter()
        .next()
        .context("the certificate names no member")?;
    let fingerprint = cert_fingerprint(&cert);
    crate::admin_api::call(
        &args.target,
        "POST",
        "/admin/v1/certs/revoke",
        Some(serde_json::json!({"fingerprint": fingerprint, "name": name})),
    )?;
    println!("revoked {name} (sha256 {fingerprint})");
    Ok(())
}

/// Runs `inferno certs`, printing the paths written.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    let written = match cmd {
        CertsCommand::Init(a) => init(&a)?,
        CertsCommand::Issue(a) => issue(&a)?,
        CertsCommand::Revoke(a) => return revoke(&a),
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// Creates the CA; returns the paths written.
pub fn init(args: &InitArgs) -> anyhow::Result<Vec<PathBuf>> {
    if !args.force {
        for f in [CA_CERT_FILE, CA_KEY_FILE] {
            let p = args.out.join(f);
            if p.exists() {
                bail!(
                    "{} already exists; refusing to overwrite the cluster CA (use --force)",
                    p.display()
                );
            }
        }
    }
    let ca = ClusterCa::generate(&args.name).context("cannot generate the cluster CA")?;
    ca.save(&args.out, args.force)
        .with_context(|| format!("cannot write the CA into {}", args.out.display()))
}

/// Issues a member certificate; returns the paths written.
pub fn issue(args: &IssueArgs) -> anyhow::Result<Vec<PathBuf>> {
    let ca = ClusterCa::load(&args.ca)
        .with_context(|| format!("cannot load the cluster CA from {}", args.ca.display()))?;
    if !args.force {
        let (cert, key) = MemberIdentity::paths(&args.out, &args.name);
        for p in [cert, key] {
            if p.exists() {
                bail!(
                    "{} already exists; refusing to overwrite it (use --force)",
                    p.display()
                );
            }
        }
    }
    let member = ca
        .issue(&args.name, args.role.into())
        .with_context(|| format!("cannot issue a certificate for {:?}", args.name))?;
    member
        .save(&args.out, args.force)
        .with_context(|| format!("cannot write {:?} into {}", args.name, args.out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let init_args = InitArgs {
            out: ca_dir.clone(),
            name: "test CA".into(),
            force: false,
        };
        let written = init(&init_args).unwrap();
        assert_eq!(
            written,
            vec![ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem")]
        );
        // A second init without --force is refused and leaves the CA alone.
        let before = std::fs::read(ca_dir.join("ca.pem")).unwrap();
        let err = init(&init_args).unwrap_err();
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        assert_eq!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), before);
        // With --force it is replaced.
        init(&InitArgs {
            force: true,
            ..init_args
        })
        .unwrap();
        assert_ne!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), before);

        let member_dir = dir.path().join("node-1");
        let issue_args = IssueArgs {
            ca: ca_dir.clone(),
            name: "node-1".into(),
            out: member_dir.clone(),
            role: RoleArg::Node,
            force: false,
        };
        let written = issue(&issue_args).unwrap();
        assert_eq!(
            written,
            vec![
                member_dir.join("node-1.pem"),
                member_dir.join("node-1-key.pem"),
                member_dir.join("ca.pem"),
            ]
        );
        let id = MemberIdentity::load(&member_dir, "node-1").unwrap();
        let ca = ClusterCa::load(&ca_dir).unwrap();
        assert_eq!(id.ca_cert_der().unwrap(), *ca.cert_der());
        assert!(issue(&issue_args).is_err());
        assert!(issue(&IssueArgs {
            force: true,
            ..issue_args
        })
        .is_ok());
    }

    #[test]
    fn issue_errors_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(&IssueArgs {
            ca: dir.path().join("missing"),
            name: "n".into(),
            out: dir.path().join("out"),
            role: RoleArg::Coordinator,
            force: false,
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot load the cluster CA"),
            "{err:#}"
        );
        let ca_dir = dir.path().join("ca");
        init(&InitArgs {
            out: ca_dir.clone(),
            name: "ca".into(),
            force: false,
        })
        .unwrap();
        let err = issue(&IssueArgs {
            ca: ca_dir,
            name: "../evil".into(),
            out: dir.path().join("out"),
            role: RoleArg::Coordinator,
            force: false,
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid member name"),
            "{err:#}"
        );
    }
}
