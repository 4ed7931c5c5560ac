//! `medmesh consortium` and `medmesh trust`: consortium admin work on files,
//! and trust changes on a node home.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use medmesh_node::api::routes::{TrustAddPeer, TrustApply, TrustBlock, TrustJoin, TrustList, TrustUnblock};
use medmesh_node::api::{AddPeerRequest, ApplyRequest, BlockRequest, JoinRequest};
use medmesh_node::consent_schema::Purpose;
use medmesh_node::identity::VerifiedNodeRecord;
use medmesh_node::keystore::Passphrase;
use medmesh_node::trust::{self, Certificate, Consortium, Revocation, RevocationTarget};
use serde::Serialize;

use crate::output::Out;
use crate::session::Session;
use crate::{ConsortiumCommand, TrustCommand};

fn admin_passphrase(what: &str) -> Result<Passphrase> {
    if let Ok(p) = std::env::var("MEDMESH_ADMIN_PASSPHRASE") {
        return Ok(Passphrase::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no admin passphrase: set MEDMESH_ADMIN_PASSPHRASE or run on a terminal to be asked for it");
    }
    Ok(Passphrase::new(
        rpassword::prompt_password(format!("passphrase for {what}: ")).context("reading the passphrase")?,
    ))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn write_new(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {what} {} (it must not exist)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("writing {}", path.display()))
}

fn descriptor_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("consortium.cbor")
    } else {
        p.to_path_buf()
    }
}

fn load_consortium(p: &Path) -> Result<Consortium> {
    let path = descriptor_path(p);
    Consortium::from_bytes(&read(&path, "consortium descriptor")?)
        .with_context(|| format!("{} is not a valid consortium descriptor", path.display()))
}

fn purposes(list: &[String]) -> Result<Vec<Purpose>> {
    let mut out: Vec<Purpose> = Vec::new();
    for p in list {
        let purpose: Purpose = p.trim().parse().with_context(|| format!("--purposes: {p:?}"))?;
        if !out.contains(&purpose) {
            out.push(purpose);
        }
    }
    Ok(out)
}

fn random_serial() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    // Serials stay below 2^53 so that JSON readers keep them exact.
    Ok(u64::from_le_bytes(b) >> 11)
}

#[derive(Serialize)]
struct ConsortiumCreated {
    id: String,
    name: String,
    threshold: u32,
    revocation_threshold: u32,
    descriptor: PathBuf,
    admin_keys: Vec<PathBuf>,
}

#[derive(Serialize)]
struct CertificateInfo {
    file: PathBuf,
    consortium: String,
    serial: u64,
    peer_id: String,
    institution: String,
    jurisdiction: String,
    purposes: Vec<Purpose>,
    not_after: i64,
    signatures: usize,
    threshold: u32,
    valid: bool,
}

fn cert_info(file: &Path, cert: &Certificate, consortium: &Consortium) -> Result<CertificateInfo> {
    let p = cert.payload()?;
    let valid = trust::verify_certificate(cert, consortium, medmesh_node::clock::now()).is_ok();
    Ok(CertificateInfo {
        file: file.to_path_buf(),
        consortium: p.consortium,
        serial: p.serial,
        peer_id: p.peer_id,
        institution: p.institution,
        jurisdiction: p.jurisdiction,
        purposes: p.purposes,
        not_after: p.not_after,
        signatures: cert.signatures.len(),
        threshold: consortium.threshold,
        valid,
    })
}

fn cert_text(i: &CertificateInfo) -> String {
    format!(
        "certificate {} serial {}\nsubject      {} ({}, {})\npurposes     {}\nsignatures   {} of {} required{}\n",
        i.file.display(),
        i.serial,
        i.peer_id,
        i.institution,
        i.jurisdiction,
        i.purposes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
        i.signatures,
        i.threshold,
        if i.valid {
            " (valid)"
        } else {
            " (not valid yet: more admin signatures needed with `medmesh trust cosign`)"
        }
    )
}

#[derive(Serialize)]
struct RevocationInfo {
    file: PathBuf,
    consortium: String,
    target: String,
    reason: String,
    signatures: usize,
    threshold: u32,
    valid: bool,
}

fn revocation_info(file: &Path, rev: &Revocation, consortium: &Consortium) -> Result<RevocationInfo> {
    let p = rev.payload()?;
    Ok(RevocationInfo {
        file: file.to_path_buf(),
        consortium: p.consortium,
        target: p.target.to_string(),
        reason: p.reason,
        signatures: rev.signatures.len(),
        threshold: consortium.revocation_threshold,
        valid: trust::verify_revocation(rev, consortium).is_ok(),
    })
}

fn revocation_text(i: &RevocationInfo) -> String {
    format!(
        "revocation of {} in {}\nsignatures   {} of {} required{}\n",
        i.target,
        i.file.display(),
        i.signatures,
        i.threshold,
        if i.valid {
            " (valid: apply it at one member with `medmesh trust apply`, it reaches the others by itself)"
        } else {
            " (not valid yet: more admin signatures needed with `medmesh trust cosign`)"
        }
    )
}

fn cosign_revocation(
    file: &Path,
    mut rev: Revocation,
    consortium: &Consortium,
    admin: &crate::AdminArgs,
    out: &Out,
) -> Result<ExitCode> {
    let secret = trust::unlock_admin_key(
        &admin.admin_key,
        &admin_passphrase(&admin.admin_key.display().to_string())?,
    )
    .with_context(|| format!("unlocking {}", admin.admin_key.display()))?;
    rev.cosign(consortium, &secret).context("co-signing")?;
    medmesh_node::fsutil::write_atomic_private(file, &rev.to_bytes()?)
        .with_context(|| format!("writing {}", file.display()))?;
    let info = revocation_info(file, &rev, consortium)?;
    out.emit("revocation", &info, || revocation_text(&info))?;
    Ok(ExitCode::SUCCESS)
}

/// `medmesh consortium ...`
pub fn consortium(cmd: ConsortiumCommand) -> Result<ExitCode> {
    let ConsortiumCommand::Init {
        name,
        out: dir,
        admins,
        threshold,
        revocation_threshold,
        json,
    } = cmd;
    let out = Out::new(json);
    if admins == 0 || admins > 32 {
        bail!("--admins must be from 1 to 32");
    }
    if threshold == 0 || threshold > admins {
        bail!("--threshold must be from 1 to --admins ({admins})");
    }
    if revocation_threshold == 0 || revocation_threshold > admins {
        bail!("--revocation-threshold must be from 1 to --admins ({admins})");
    }
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: refusing to overwrite a consortium",
            dir.display()
        );
    }
    medmesh_node::fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut keys = Vec::new();
    let mut paths = Vec::new();
    for i in 1..=admins {
        let path = dir.join(format!("admin-{i}.key"));
        let pass = admin_passphrase(&path.display().to_string())?;
        keys.push(trust::create_admin_key(&path, &pass).with_context(|| format!("creating {}", path.display()))?);
        paths.push(path);
    }
    let consortium = Consortium::new(&name, keys, threshold, medmesh_node::clock::now())
        .and_then(|c| c.with_revocation_threshold(revocation_threshold))
        .context("creating the consortium")?;
    let descriptor = dir.join("consortium.cbor");
    write_new(&descriptor, &consortium.to_bytes()?, "consortium descriptor")?;
    let created = ConsortiumCreated {
        id: consortium.id.clone(),
        name: consortium.name.clone(),
        threshold,
        revocation_threshold,
        descriptor,
        admin_keys: paths,
    };
    out.emit("consortium", &created, || {
        format!(
            "consortium {} ({})\ndescriptor   {}\nadmin keys   {}\nthreshold    {} of {}\nrevocations  {} of {}\n",
            created.name,
            created.id,
            created.descriptor.display(),
            created
                .admin_keys
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            threshold,
            admins,
            revocation_threshold,
            admins
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `medmesh trust ...`
pub fn trust(cmd: TrustCommand) -> Result<ExitCode> {
    match cmd {
        TrustCommand::Issue {
            admin,
            record,
            purposes: list,
            valid_days,
            out: file,
            json,
        } => {
            let out = Out::new(json);
            let consortium = load_consortium(&admin.consortium)?;
            let record = VerifiedNodeRecord::from_bytes(&read(&record, "node record")?)
                .with_context(|| format!("{} is not a valid signed node record", record.display()))?;
            let purposes = purposes(&list)?;
            if valid_days == 0 {
                bail!("--valid-days must be at least 1");
            }
            let secret = trust::unlock_admin_key(
                &admin.admin_key,
                &admin_passphrase(&admin.admin_key.display().to_string())?,
            )
            .with_context(|| format!("unlocking {}", admin.admin_key.display()))?;
            let now = medmesh_node::clock::now();
            let cert = Certificate::issue(
                &consortium,
                &secret,
                &record,
                purposes,
                now - 300,
                now + i64::from(valid_days) * 86_400,
                random_serial()?,
            )
            .context("issuing the certificate")?;
            write_new(&file, &cert.to_bytes()?, "certificate")?;
            let info = cert_info(&file, &cert, &consortium)?;
            out.emit("certificate", &info, || cert_text(&info))?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Cosign {
            cert: file,
            admin,
            json,
        } => {
            let out = Out::new(json);
            let consortium = load_consortium(&admin.consortium)?;
            let bytes = read(&file, "certificate or revocation")?;
            if let Ok(rev) = Revocation::from_bytes(&bytes)
                && rev.payload().is_ok()
            {
                return cosign_revocation(&file, rev, &consortium, &admin, &out);
            }
            let mut cert = Certificate::from_bytes(&bytes)
                .with_context(|| format!("{} is not a certificate or a revocation", file.display()))?;
            let secret = trust::unlock_admin_key(
                &admin.admin_key,
                &admin_passphrase(&admin.admin_key.display().to_string())?,
            )
            .with_context(|| format!("unlocking {}", admin.admin_key.display()))?;
            cert.cosign(&consortium, &secret).context("co-signing")?;
            medmesh_node::fsutil::write_atomic_private(&file, &cert.to_bytes()?)
                .with_context(|| format!("writing {}", file.display()))?;
            let info = cert_info(&file, &cert, &consortium)?;
            out.emit("certificate", &info, || cert_text(&info))?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Revoke {
            admin,
            serial,
            peer,
            reason,
            out: file,
            json,
        } => {
            let out = Out::new(json);
            let consortium = load_consortium(&admin.consortium)?;
            let target = match (serial, peer) {
                (Some(s), _) => RevocationTarget::Serial(s),
                (None, Some(p)) => RevocationTarget::Peer(p),
                (None, None) => bail!("give --serial or --peer"),
            };
            let secret = trust::unlock_admin_key(
                &admin.admin_key,
                &admin_passphrase(&admin.admin_key.display().to_string())?,
            )
            .with_context(|| format!("unlocking {}", admin.admin_key.display()))?;
            let rev = Revocation::issue(
                &consortium,
                &secret,
                target.clone(),
                &reason,
                medmesh_node::clock::now(),
            )
            .context("signing the revocation")?;
            write_new(&file, &rev.to_bytes()?, "revocation")?;
            let info = revocation_info(&file, &rev, &consortium)?;
            out.emit("revocation", &info, || revocation_text(&info))?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Join { home, descriptor, cert } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let entry = node
                .call::<TrustJoin>(JoinRequest {
                    descriptor: hex::encode(read(&descriptor_path(&descriptor), "consortium descriptor")?),
                    certificate: hex::encode(read(&cert, "certificate")?),
                })
                .context("joining the consortium")?;
            out.emit("consortium", &entry, || {
                format!("joined consortium {} ({}): {}\n", entry.name, entry.id, entry.status)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::AddPeer {
            home,
            record,
            purposes: list,
            valid_days,
        } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let entry = node
                .call::<TrustAddPeer>(AddPeerRequest {
                    record: hex::encode(read(&record, "node record")?),
                    purposes: purposes(&list)?,
                    valid_days,
                })
                .context("adding the peer")?;
            out.emit("bilateral", &entry, || {
                format!(
                    "trusting {} ({}, {}) directly\n",
                    entry.peer_id, entry.institution, entry.jurisdiction
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Apply { home, revocation } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let entry = node
                .call::<TrustApply>(ApplyRequest {
                    revocation: hex::encode(read(&revocation, "revocation")?),
                })
                .context("applying the revocation")?;
            out.emit("revocation", &entry, || {
                format!("applied: {} revoked ({})\n", entry.target, entry.reason)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Block { home, peer_id, reason } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let entry = node
                .call::<TrustBlock>(BlockRequest { peer_id, reason })
                .context("blocking the peer")?;
            out.emit("blocked", &entry, || format!("blocked {}\n", entry.peer_id))?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Unblock { home, peer_id } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let u = node
                .call::<TrustUnblock>(BlockRequest {
                    peer_id,
                    reason: String::new(),
                })
                .context("unblocking the peer")?;
            out.emit("unblocked", &u, || {
                if u.was_blocked {
                    format!("unblocked {}\n", u.peer_id)
                } else {
                    format!("{} was not blocked\n", u.peer_id)
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::List { home } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let l = node.call::<TrustList>(()).context("listing trust")?;
            if out.json {
                for c in &l.consortia {
                    out.line("consortium", c);
                }
                for b in &l.bilateral {
                    out.line("bilateral", b);
                }
                for r in &l.revocations {
                    out.line("revocation", r);
                }
                for b in &l.blocked {
                    out.line("blocked", b);
                }
            } else {
                let mut s = String::new();
                for c in &l.consortia {
                    s.push_str(&format!(
                        "consortium {} ({}), {} of {} admins; this node: {}{}\n",
                        c.name,
                        c.id,
                        c.threshold,
                        c.admins.len(),
                        c.status,
                        c.expires.as_ref().map(|e| format!(", until {e}")).unwrap_or_default()
                    ));
                }
                for b in &l.bilateral {
                    s.push_str(&format!(
                        "peer {} ({}, {}) trusted directly\n",
                        b.peer_id, b.institution, b.jurisdiction
                    ));
                }
                for r in &l.revocations {
                    s.push_str(&format!("revoked {} in {}: {}\n", r.target, r.consortium, r.reason));
                }
                for b in &l.blocked {
                    s.push_str(&format!("blocked {} since {}: {}\n", b.peer_id, b.since, b.reason));
                }
                if s.is_empty() {
                    s.push_str("no consortium joined, no peer trusted, nothing revoked or blocked\n");
                }
                out.text(&s)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
