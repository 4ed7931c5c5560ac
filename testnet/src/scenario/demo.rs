//! `medmesh-testnet demo`: a consortium exchanging studies on one machine,
//! with real `medmesh run` processes, real DICOM and real cryptography.
//!
//! 1. A consortium with three admins, two of whom must sign a membership
//!    certificate or a revocation: a certificate with one signature is
//!    refused, co-signed it is accepted. Three sites join: Klinikum Nord and Universitätsklinikum
//!    Süd in Germany, Hôpital Lumière in France.
//! 2. The sites start on 127.0.0.1 and see each other as trusted peers.
//! 3. Klinikum Nord imports real DICOM from the repository's corpus (a CT,
//!    an MR series, a secondary capture) and a generated CT study; its CT
//!    modality (dcmtk's `storescu`) sends a new study to Nord's DICOM SCP;
//!    Nord records two consents: treatment by sites in Germany
//!    (identifiable), and research by the consortium (pseudonymised).
//! 4. Süd asks for the generated study for treatment: within Germany, it
//!    arrives identifiable and byte-identical, and Süd's gateway route
//!    forwards it to Süd's PACS (dcmtk's `storescp`, started by the demo).
//!    The PACS leg runs when dcmtk is installed; the demo says when not.
//! 5. Lumière asks for the MR series for research: across the border the
//!    site policy requires the anonymised level, and research needs a
//!    person's approval at the holder; approved, it arrives anonymised, with
//!    none of the patient's identifiers.
//! 6. Lumière asks for the CT without any consent: denied, nothing sent.
//! 7. The treatment consent is withdrawn: Süd's next request is denied.
//! 8. Two admins revoke Lumière; Nord alone applies the revocation, and it
//!    reaches Süd by itself: both disconnect Lumière, its next request is
//!    refused, and Nord lists it as revoked.
//! 9. Nord's notifications name the other sites' entries about its studies;
//!    `log verify` passes at every site and Nord and Süd hold the same head
//!    of every feed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Recorder, ScenarioError, Step, exit_of, export_compare, file_hashes, files_under, io, last_record, reason,
    stderr_tail, wait_state,
};
use crate::cluster::{self, Cluster, ClusterNode};
use crate::feeds::HeadsPoller;
use crate::process::{self, json_lines};
use crate::{PatientOverrides, StudySpec, generate};

/// The sites: name, institution, jurisdiction.
const SITES: [(&str, &str, &str); 3] = [
    ("nord", "Klinikum Nord", "DE"),
    ("sued", "Universitätsklinikum Süd", "DE"),
    ("lumiere", "Hôpital Lumière", "FR"),
];

/// Real DICOM from the repository's corpus imported at the holder.
const CORPUS: [&str; 3] = [
    "ct/ct_ge_small_explicit-le.dcm",
    "series/mr_siemens_deidentified_dcm_qa_deident",
    "ct/ct_brain_siemens_sc-jpeg_fake-phi.dcm",
];

/// Patient of the corpus MR series (name and ID are both FRUIT).
const MR_PATIENT: &str = "FRUIT";
/// Patient of the corpus CT `ct_ge_small_explicit-le.dcm` (no consent is recorded for it).
const CT_STUDY: &str = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";
/// The MR series' Study Instance UID.
const MR_STUDY: &str = "1.2.840.113713.20.280023911736152577783328064041893667800";

/// How long a transfer may take.
const TRANSFER_WAIT: Duration = Duration::from_secs(120);

/// The folder with the repository's DICOM corpus.
#[must_use]
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus")
}

/// A site's home.
fn home(c: &Cluster, i: usize) -> &Path {
    &c.nodes[i].home
}

/// `medmesh ARGS` at `home` with the admin passphrase too (offline admin commands).
fn admin(home: &Path, args: &[&str]) -> Result<std::process::Output, ScenarioError> {
    Ok(process::medmesh(home)?
        .env("MEDMESH_ADMIN_PASSPHRASE", process::passphrase())
        .args(args)
        .output()
        .map_err(process::ProcessError::from)?)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A request from `home` to `peer`: exit code, last record, stderr tail.
fn request(home: &Path, peer: &str, study: &str, purpose: &str) -> Result<(Option<i32>, Value, String), ScenarioError> {
    let out = process::run(
        home,
        &[
            "request",
            "--peer",
            peer,
            "--study",
            study,
            "--purpose",
            purpose,
            "--json",
        ],
    )?;
    Ok((out.status.code(), last_record(&out), stderr_tail(&out)))
}

/// The consent id printed by `consent add --json`.
fn consent_add(home: &Path, args: &[&str]) -> Result<(std::process::Output, String), ScenarioError> {
    let mut all = vec!["consent", "add", "--json"];
    all.extend_from_slice(args);
    let out = process::run(home, &all)?;
    // `consent add --json` prints one object, {"id": ...}.
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((out, id))
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> Result<Vec<String>, ScenarioError> {
    let mut hits = Vec::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).map_err(io(&f))?;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(f.display().to_string());
        }
    }
    Ok(hits)
}

/// Creates the consortium (3 admins, 2 signatures) and the three homes, each
/// joined with a certificate co-signed by two admins. The first site is
/// first tried with one signature, which must be refused.
fn consortium(r: &mut Recorder<'_>, dir: &Path) -> Result<Option<(Cluster, String)>, ScenarioError> {
    let cdir = dir.join("consortium");
    let out = admin(
        dir,
        &[
            "consortium",
            "init",
            "--name",
            "EU imaging demo consortium",
            "--admins",
            "3",
            "--threshold",
            "2",
            "--revocation-threshold",
            "2",
            "--out",
            &s(&cdir),
            "--json",
        ],
    )?;
    let created = last_record(&out);
    let id = created["id"].as_str().unwrap_or_default().to_string();
    if !r.check(
        "three consortium admins create the consortium; a certificate or a revocation needs two of their signatures",
        "exit 0, thresholds 2 of 3 admin keys",
        format!(
            "exit {}, consortium {}, thresholds {} and {} of {} admin keys{}",
            exit_of(&out),
            id,
            created["threshold"],
            created["revocation_threshold"],
            created["admin_keys"].as_array().map_or(0, Vec::len),
            stderr_tail(&out)
        ),
        out.status.success() && created["threshold"] == 2 && created["revocation_threshold"] == 2 && !id.is_empty(),
    ) {
        return Ok(None);
    }
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).map_err(io(&certs))?;
    let mut nodes = Vec::new();
    for (i, (name, institution, cc)) in SITES.iter().enumerate() {
        let h = dir.join(name);
        let out = process::run(&h, &["init", "--institution", institution, "--jurisdiction", cc])?;
        if !out.status.success() {
            r.check(
                &format!("{institution} ({cc}) creates its node"),
                "exit 0",
                format!("exit {}{}", exit_of(&out), stderr_tail(&out)),
                false,
            );
            return Ok(None);
        }
        let cert = certs.join(format!("{name}.cert"));
        let issue = admin(
            &h,
            &[
                "trust",
                "issue",
                "--consortium",
                &s(&cdir),
                "--admin-key",
                &s(&cdir.join("admin-1.key")),
                "--record",
                &s(&h.join("node-record.cbor")),
                "--purposes",
                "treatment,second-opinion,research",
                "--valid-days",
                "30",
                "--out",
                &s(&cert),
            ],
        )?;
        let join = || process::run(&h, &["trust", "join", &s(&cdir.join("consortium.cbor")), &s(&cert)]);
        if i == 0 {
            let once = join()?;
            let err = String::from_utf8_lossy(&once.stderr).to_string();
            if !r.check(
                &format!("{institution} tries to join with a certificate signed by one admin only"),
                "refused: 1 of 2 signatures",
                format!("exit {}{}", exit_of(&once), stderr_tail(&once)),
                issue.status.success() && !once.status.success() && err.contains("signature"),
            ) {
                return Ok(None);
            }
        }
        let cosign = admin(
            &h,
            &[
                "trust",
                "cosign",
                "--consortium",
                &s(&cdir),
                "--admin-key",
                &s(&cdir.join(format!("admin-{}.key", 2 + i % 2))),
                &s(&cert),
            ],
        )?;
        let joined = join()?;
        if !r.check(
            &format!("a second admin co-signs; {institution} ({cc}) joins the consortium"),
            "exit 0",
            format!(
                "issue exit {}, co-sign exit {}, join exit {}{}",
                exit_of(&issue),
                exit_of(&cosign),
                exit_of(&joined),
                stderr_tail(&joined)
            ),
            issue.status.success() && cosign.status.success() && joined.status.success(),
        ) {
            return Ok(None);
        }
        cluster::configure_loopback(&h, &[])?;
        cluster::throwaway_store(&h)?;
        nodes.push(ClusterNode::for_home(name, &h)?);
    }
    Ok(Some((
        Cluster {
            dir: dir.to_path_buf(),
            consortium: cdir,
            nodes,
        },
        id,
    )))
}

/// The generated study imported at the holder, with the BLAKE3 of its files by SOP Instance UID.
struct Generated {
    uid: String,
    patient: String,
    issuer: String,
    hashes: BTreeMap<String, blake3::Hash>,
}

/// Imports the corpus studies and a generated CT at the holder.
fn import(r: &mut Recorder<'_>, c: &Cluster, dir: &Path) -> Result<Option<Generated>, ScenarioError> {
    let gen_dir = dir.join("generated-study");
    let spec = StudySpec {
        seed: 2026,
        slices: 12,
        rows: 256,
        cols: 256,
        patient: Some(PatientOverrides {
            id: Some("KN-0042".into()),
            ..PatientOverrides::default()
        }),
        ..StudySpec::default()
    };
    let g = generate(&spec, &gen_dir)?;
    let corpus = corpus_dir();
    let mut args = vec!["study".to_string(), "import".into(), "--json".into()];
    args.extend(CORPUS.iter().map(|p| s(&corpus.join(p))));
    args.push(s(&gen_dir));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = process::run(home(c, 0), &refs)?;
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .map(|(_, d)| d)
        .unwrap_or_default();
    let studies = summary["studies"].as_u64().unwrap_or(0);
    let imported = summary["imported"].as_u64().unwrap_or(0);
    let want = 5 + u64::from(spec.slices);
    if !r.check(
        "Klinikum Nord imports real DICOM (a CT, an MR series, a secondary capture) and a generated CT study",
        &format!("exit 0, 4 studies, {want} objects, each stored encrypted"),
        format!(
            "exit {}, {studies} studies, {imported} objects imported, {} rejected{}",
            exit_of(&out),
            summary["rejected"].as_u64().unwrap_or(0),
            stderr_tail(&out)
        ),
        out.status.success() && studies == 4 && imported == want,
    ) {
        return Ok(None);
    }
    let hashes = file_hashes(&g)?;
    Ok(Some(Generated {
        uid: g.study_uid,
        patient: g.phi.patient_id,
        issuer: g.phi.issuer_of_patient_id,
        hashes,
    }))
}

/// Runs the demo in `dir` (empty or absent), calling `on_step` with each
/// step as it is decided, and returns every step. Every node it starts is
/// stopped before it returns.
///
/// # Errors
/// [`ScenarioError`] when the demo cannot run at all (the network does not
/// come up, `medmesh` cannot be run, a file cannot be written); a failed
/// check is a failed step.
pub fn run(dir: &Path, on_step: &mut dyn FnMut(&Step)) -> Result<Vec<Step>, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let Some((mut c, consortium_id)) = consortium(&mut r, dir)? else {
        return Ok(r.steps);
    };
    let result = exchange(&mut r, &mut c, dir, &consortium_id);
    c.stop();
    result?;
    Ok(r.steps)
}

/// Steps 2 to 9 on the joined sites.
#[allow(clippy::too_many_lines)] // one story, told in order
fn exchange(r: &mut Recorder<'_>, c: &mut Cluster, dir: &Path, consortium_id: &str) -> Result<(), ScenarioError> {
    let start = Instant::now();
    let pacs = pacs_leg(c, dir)?;
    c.start()?;
    let mesh = c.wait_mesh(Duration::from_secs(60));
    if !r.check(
        "the three sites start on 127.0.0.1 and find each other",
        "each sees the other two as connected, trusted peers",
        match &mesh {
            Ok(()) => format!("all connected and trusted after {:.1} s", start.elapsed().as_secs_f64()),
            Err(e) => e.to_string(),
        },
        mesh.is_ok(),
    ) {
        return Ok(());
    }
    let peer = |i: usize| c.nodes[i].peer_id.clone();
    let peers: Vec<String> = (0..SITES.len()).map(peer).collect();
    let site_of = |author: &str| {
        peers
            .iter()
            .position(|p| p == author)
            .map_or("another site", |i| SITES[i].1)
    };
    let (nord, sued, lumiere) = (
        home(c, 0).to_path_buf(),
        home(c, 1).to_path_buf(),
        home(c, 2).to_path_buf(),
    );
    let Some(generated) = import(r, c, dir)? else {
        return Ok(());
    };
    match &pacs {
        Some(leg) => modality_push(r, leg, &nord, dir)?,
        None => {
            r.check(
                "the PACS leg (a modality's C-STORE into Nord, Süd forwarding to its PACS)",
                "runs when dcmtk (storescu, storescp) is installed",
                "skipped: dcmtk is not installed (scripts/system-deps.sh installs it)".into(),
                true,
            );
        }
    }

    // Consents at the holder.
    let (out_t, treatment_consent) = consent_add(
        &nord,
        &[
            "--patient-id",
            &generated.patient,
            "--issuer",
            &generated.issuer,
            "--purpose",
            "treatment",
            "--recipient-jurisdiction",
            "DE",
            "--level",
            "identifiable",
        ],
    )?;
    let (out_r, _) = consent_add(
        &nord,
        &[
            "--patient-id",
            MR_PATIENT,
            "--purpose",
            "research",
            "--recipient-consortium",
            consortium_id,
            "--level",
            "pseudonymised",
        ],
    )?;
    if !r.check(
        "Klinikum Nord records two consents: the CT patient's for treatment by sites in Germany (identifiable); \
         the MR patient's for research by the consortium (pseudonymised)",
        "exit 0 twice",
        format!(
            "exit {}{}, exit {}{}",
            exit_of(&out_t),
            stderr_tail(&out_t),
            exit_of(&out_r),
            stderr_tail(&out_r)
        ),
        out_t.status.success() && out_r.status.success() && !treatment_consent.is_empty(),
    ) {
        return Ok(());
    }

    // Treatment within Germany: identifiable, byte-identical.
    let t0 = Instant::now();
    let (code, rec, err) = request(&sued, &peer(0), &generated.uid, "treatment")?;
    let id = rec["id"].as_str().unwrap_or_default().to_string();
    let (done, landed) = wait_state(&sued, &id, &["landed", "complete", "failed"], TRANSFER_WAIT)?;
    let landed = landed && done["state"] != "failed";
    let export = dir.join("exports").join("sued-treatment");
    let exported = export_compare(&sued, &generated.uid, &export, &generated.hashes)?;
    r.check(
        "Universitätsklinikum Süd (DE) asks Klinikum Nord (DE) for the generated CT, for treatment",
        "granted identifiable within the country; arrives and exports byte-identical",
        format!(
            "exit {}, {} at level {}, {} in {:.1} s; export exit {}: {} of {} files identical{err}",
            code.map_or_else(|| "?".into(), |c| c.to_string()),
            rec["state"].as_str().unwrap_or("?"),
            rec["level"].as_str().unwrap_or("?"),
            done["state"].as_str().unwrap_or("?"),
            t0.elapsed().as_secs_f64(),
            exit_of(&exported.out),
            exported.same,
            generated.hashes.len()
        ),
        code == Some(0) && rec["level"] == "identifiable" && landed && exported.identical(generated.hashes.len()),
    );
    if let Some(leg) = &pacs {
        forwarded(r, leg, &sued, &dir.join("generated-study"))?;
    }

    // Cross-border research: anonymised by policy, after a person's approval.
    let t0 = Instant::now();
    let (code, rec, err) = request(&lumiere, &peer(0), MR_STUDY, "research")?;
    let id = rec["id"].as_str().unwrap_or_default().to_string();
    r.check(
        "Hôpital Lumière (FR) asks for the MR series for research",
        "pending: research needs a person's approval at the holder",
        format!(
            "exit {}, {}, {}{err}",
            code.map_or_else(|| "?".into(), |c| c.to_string()),
            rec["state"].as_str().unwrap_or("?"),
            reason(&rec)
        ),
        rec["state"] == "pending",
    );
    let out = process::run(&nord, &["approvals", "approve", &id, "--json"])?;
    let approved = last_record(&out);
    let (done, landed) = wait_state(&lumiere, &id, &["landed", "complete", "failed"], TRANSFER_WAIT)?;
    let landed = landed && done["state"] != "failed";
    let out_list = process::run(&lumiere, &["study", "list", "--json"])?;
    let received: Vec<Value> = json_lines(&out_list.stdout)
        .into_iter()
        .filter(|(k, v)| k == "study" && v["origin"] == "received")
        .map(|(_, v)| v)
        .collect();
    let new_uid = received
        .first()
        .and_then(|v| v["study_uid"].as_str())
        .unwrap_or_default()
        .to_string();
    let export = dir.join("exports").join("lumiere-research");
    let out_exp = process::run(&lumiere, &["study", "export", &new_uid, "--out", &s(&export)])?;
    let files = files_under(&export).len();
    let mut leaks = any_file_contains(&export, MR_PATIENT.as_bytes())?;
    leaks.extend(any_file_contains(&export, MR_STUDY.as_bytes())?);
    r.check(
        "Klinikum Nord's data steward approves; across the border the site policy requires the anonymised level",
        "granted anonymised; arrives under a new Study Instance UID, no patient name, ID or original UID in any file",
        format!(
            "approve exit {}, level {}, {} in {:.1} s; received as {}, {files} files exported, {} with an identifier{}",
            exit_of(&out),
            approved["level"].as_str().unwrap_or("?"),
            done["state"].as_str().unwrap_or("?"),
            t0.elapsed().as_secs_f64(),
            if new_uid.is_empty() { "nothing" } else { "2.25…" },
            leaks.len(),
            stderr_tail(&out)
        ),
        out.status.success()
            && approved["level"] == "anonymised"
            && landed
            && new_uid.starts_with("2.25.")
            && new_uid != MR_STUDY
            && out_exp.status.success()
            && files == 3
            && leaks.is_empty(),
    );

    // No consent: denied, nothing sent.
    let (code, rec, err) = request(&lumiere, &peer(0), CT_STUDY, "treatment")?;
    r.check(
        "Hôpital Lumière asks for the corpus CT, whose patient gave no consent",
        "denied (not-available: the holder does not say whether it exists), nothing sent",
        format!(
            "exit {}, {}, {}, {} objects{err}",
            code.map_or_else(|| "?".into(), |c| c.to_string()),
            rec["state"].as_str().unwrap_or("?"),
            reason(&rec),
            rec["objects"].as_u64().unwrap_or(0)
        ),
        code == Some(1) && rec["state"] == "denied" && rec["objects"].as_u64().unwrap_or(0) == 0,
    );

    // Consent withdrawn: the next request is denied.
    let out = process::run(&nord, &["consent", "withdraw", &treatment_consent])?;
    let (code, rec, err) = request(&sued, &peer(0), &generated.uid, "treatment")?;
    r.check(
        "the CT patient withdraws the treatment consent; Süd asks again",
        "withdrawal recorded; the request is denied",
        format!(
            "withdraw exit {}; request exit {}, {}, {}{err}",
            exit_of(&out),
            code.map_or_else(|| "?".into(), |c| c.to_string()),
            rec["state"].as_str().unwrap_or("?"),
            reason(&rec)
        ),
        out.status.success() && code == Some(1) && rec["state"] == "denied",
    );

    // Before the revocation every site holds the same feeds.
    let homes = [nord.clone(), sued.clone(), lumiere.clone()];
    let poller = HeadsPoller::new(&homes)?;
    let agreed = poller.wait(Duration::from_secs(30), Duration::from_millis(200), |poll| {
        poll.iter().all(Option::is_some) && poll.windows(2).all(|w| w[0] == w[1])
    });
    let feeds = agreed.poll.first().cloned().flatten().unwrap_or_default();
    r.check(
        "the access ledger: every site holds every site's feed",
        "the three sites hold the same head of each of the 3 feeds",
        format!(
            "{} after {:.1} s: {}",
            if agreed.ok { "the same" } else { "different" },
            agreed.took.as_secs_f64(),
            feeds
                .iter()
                .map(|(a, s)| format!("{}'s at entry {s}", site_of(a)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        agreed.ok && feeds.len() == 3,
    );

    // Revocation.
    let rev = dir.join("certs").join("lumiere.revocation");
    let cdir = c.consortium.clone();
    let out = admin(
        &nord,
        &[
            "trust",
            "revoke",
            "--consortium",
            &s(&cdir),
            "--admin-key",
            &s(&cdir.join("admin-3.key")),
            "--peer",
            &peer(2),
            "--reason",
            "demo: membership ended",
            "--out",
            &s(&rev),
        ],
    )?;
    let cosigned = admin(
        &nord,
        &[
            "trust",
            "cosign",
            "--consortium",
            &s(&cdir),
            "--admin-key",
            &s(&cdir.join("admin-1.key")),
            &s(&rev),
        ],
    )?;
    // Nord alone applies it; it reaches Süd through the network.
    let a1 = process::run(&nord, &["trust", "apply", &s(&rev)])?;
    let applied = Instant::now();
    let deadline = applied + Duration::from_secs(15);
    let (mut refused_listing, mut sued_applied, mut sued_dropped) = (false, false, false);
    while Instant::now() < deadline {
        let peers = process::run(&nord, &["peers", "--json"])?;
        let text = String::from_utf8_lossy(&peers.stdout);
        refused_listing = !cluster::connected_trusted(&nord)?.contains(&peer(2)) && text.contains("revoked");
        let list = process::run(&sued, &["trust", "list", "--json"])?;
        sued_applied = json_lines(&list.stdout)
            .iter()
            .any(|(t, d)| t == "revocation" && d["reason"] == "demo: membership ended");
        sued_dropped = !cluster::connected_trusted(&sued)?.contains(&peer(2));
        if refused_listing && sued_applied && sued_dropped {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let reached = applied.elapsed();
    let (code, rec, err) = request(&lumiere, &peer(0), MR_STUDY, "research")?;
    r.check(
        "two admins revoke Hôpital Lumière; Nord alone applies the revocation; Lumière asks again",
        "the revocation reaches Süd by itself; Lumière disconnected at Nord and Süd, listed as revoked at Nord; its request gets no grant",
        format!(
            "revoke exit {}, cosign exit {}, apply at Nord exit {}; Süd applied it by itself: {} ({:.1} s); \
             Lumière disconnected at Süd: {}; Nord lists Lumière as revoked: {}; request exit {}, {}{err}",
            exit_of(&out),
            exit_of(&cosigned),
            exit_of(&a1),
            if sued_applied { "yes" } else { "no" },
            reached.as_secs_f64(),
            if sued_dropped { "yes" } else { "no" },
            if refused_listing { "yes" } else { "no" },
            code.map_or_else(|| "?".into(), |c| c.to_string()),
            rec["state"].as_str().unwrap_or("no record"),
        ),
        out.status.success()
            && cosigned.status.success()
            && a1.status.success()
            && sued_applied
            && sued_dropped
            && refused_listing
            && code != Some(0)
            && rec["state"] != "granted",
    );

    // The holder's notifications.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let out = process::run(&nord, &["notifications", "--json"])?;
        for (_, v) in json_lines(&out.stdout) {
            if let (Some(k), Some(a)) = (v["kind"].as_str(), v["author"].as_str()) {
                let who = site_of(a);
                let list = kinds.entry(who.to_string()).or_default();
                if !list.iter().any(|x| x == k) {
                    list.push(k.to_string());
                }
            }
        }
        let has = |who: &str| {
            kinds
                .get(who)
                .is_some_and(|l| l.iter().any(|k| k == "transfer-received"))
        };
        if (has(SITES[1].1) && has(SITES[2].1)) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let has = |who: &str| {
        kinds
            .get(who)
            .is_some_and(|l| l.iter().any(|k| k == "transfer-received"))
    };
    let holder_told = has(SITES[1].1) && has(SITES[2].1);
    r.check(
        "Klinikum Nord reads its notifications: what other sites recorded about its studies",
        "Süd's and Lumière's transfer-received entries, by study commitment (no patient data)",
        kinds
            .iter()
            .map(|(who, k)| format!("{who}: {}", k.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
        holder_told,
    );

    // Every site verifies its feeds; the trusted sites agree.
    let mut verified = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        let out = process::run(h, &["log", "verify", "--json"])?;
        let lines = json_lines(&out.stdout);
        let entries: u64 = lines
            .iter()
            .filter(|(k, _)| k == "feed")
            .filter_map(|(_, f)| f["entries"].as_u64())
            .sum();
        let ok = lines.iter().any(|(k, v)| k == "log-verify" && v["ok"] == true);
        verified.push((SITES[i].1, out.status.success() && ok, entries));
    }
    let both = HeadsPoller::new(&homes[..2])?;
    let agreed = both.wait(Duration::from_secs(30), Duration::from_millis(200), |poll| {
        poll.iter().all(Option::is_some) && poll[0] == poll[1]
    });
    r.check(
        "`medmesh log verify` at every site; Nord and Süd compare feed heads",
        "every signature and chain verifies at all three; Nord and Süd hold the same head of every feed",
        format!(
            "{}; Nord and Süd {}",
            verified
                .iter()
                .map(|(name, ok, n)| format!("{name}: {} ({n} entries)", if *ok { "verified" } else { "FAILED" }))
                .collect::<Vec<_>>()
                .join(", "),
            if agreed.ok { "agree" } else { "disagree" }
        ),
        verified.iter().all(|(_, ok, _)| *ok) && agreed.ok,
    );
    Ok(())
}

/// The PACS leg (issue 18): Klinikum Nord's modality sends a study to its
/// node by C-STORE (dcmtk's `storescu`), and Süd forwards what it receives
/// for treatment to its PACS (dcmtk's `storescp`, started here). Only when
/// dcmtk is installed; the demo says so otherwise.
struct PacsLeg {
    /// Süd's PACS.
    pacs: Child,
    /// Where it writes what it receives.
    received: PathBuf,
    /// `storescu`.
    storescu: PathBuf,
}

impl Drop for PacsLeg {
    fn drop(&mut self) {
        let _ = self.pacs.kill();
        let _ = self.pacs.wait();
    }
}

/// A program on the PATH.
fn program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16, ScenarioError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io(Path::new("127.0.0.1:0")))?;
    Ok(l.local_addr().map_err(io(Path::new("127.0.0.1:0")))?.port())
}

/// Starts Süd's PACS and writes the gateway settings: Nord's SCP (for its
/// modality), Süd's destination and its route for treatment. `None` when
/// dcmtk is not installed.
fn pacs_leg(c: &Cluster, dir: &Path) -> Result<Option<PacsLeg>, ScenarioError> {
    let (Some(storescu), Some(storescp)) = (program("storescu"), program("storescp")) else {
        return Ok(None);
    };
    let received = dir.join("sued-pacs");
    std::fs::create_dir_all(&received).map_err(io(&received))?;
    let port = free_port()?;
    let pacs = Command::new(storescp)
        .args(["-aet", "SUED-PACS", "+B", "-od"])
        .arg(&received)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(&received))?;
    let edit = |home: &Path, f: &dyn Fn(String) -> String| -> Result<(), ScenarioError> {
        let path = home.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        std::fs::write(&path, f(text)).map_err(io(&path))
    };
    edit(home(c, 0), &|t| {
        t.replacen("enabled = false", "enabled = true", 1).replacen(
            "listen = \"127.0.0.1:11112\"",
            "listen = \"127.0.0.1:0\"",
            1,
        ) + "\n[[gateway.calling]]\nae_title = \"MODALITY\"\nhost = \"127.0.0.1\"\n"
    })?;
    edit(home(c, 1), &|t| {
        t + &format!(
            "\n[[gateway.destination]]\nname = \"sued-pacs\"\nae_title = \"SUED-PACS\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             \n[[gateway.route]]\ndestination = \"sued-pacs\"\npurpose = \"treatment\"\n"
        )
    })?;
    Ok(Some(PacsLeg {
        pacs,
        received,
        storescu,
    }))
}

/// The data set of a Part 10 file: the bytes after its file meta group
/// (each side writes its own meta).
fn data_set(path: &Path) -> Result<Vec<u8>, ScenarioError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let len = bytes
        .get(140..144)
        .filter(|_| bytes.get(128..132) == Some(b"DICM".as_slice()) && bytes.get(132..136) == Some(&[2, 0, 0, 0]))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    Ok(len.and_then(|l| bytes.get(144 + l..)).unwrap_or_default().to_vec())
}

/// The data sets of the files under `dir`, sorted.
fn data_sets(dir: &Path) -> Result<Vec<Vec<u8>>, ScenarioError> {
    let mut out = files_under(dir)
        .iter()
        .map(|f| data_set(f))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// Nord's modality sends a generated study to Nord's SCP.
fn modality_push(r: &mut Recorder<'_>, leg: &PacsLeg, nord: &Path, dir: &Path) -> Result<(), ScenarioError> {
    let out = process::run(nord, &["status", "--json"])?;
    let status = last_record(&out);
    let port = status["gateway"]["listen"]
        .as_str()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    let spec = StudySpec {
        seed: 2027,
        slices: 3,
        rows: 128,
        cols: 128,
        ..StudySpec::default()
    };
    let g = generate(&spec, &dir.join("modality-study"))?;
    let sent = match port {
        Some(port) => Some(
            Command::new(&leg.storescu)
                .args(["-aet", "MODALITY", "-aec", "MEDMESH", "127.0.0.1", &port.to_string()])
                .args(&g.files)
                .output()
                .map_err(io(&leg.storescu))?,
        ),
        None => None,
    };
    let list = process::run(nord, &["study", "list", "--json"])?;
    let held = json_lines(&list.stdout)
        .into_iter()
        .find(|(k, v)| k == "study" && v["study_uid"] == g.study_uid.as_str())
        .map_or(0, |(_, v)| v["instances"].as_u64().unwrap_or(0));
    r.check(
        "Klinikum Nord's CT modality sends a new study to Nord's node by DICOM C-STORE (dcmtk storescu to the node's SCP)",
        "every object stored (validated, sealed, de-duplicated, as `study import` does)",
        format!(
            "SCP {} on port {}; storescu exit {}; Nord holds {held} of {} objects",
            status["gateway"]["ae_title"].as_str().unwrap_or("?"),
            port.map_or_else(|| "?".into(), |p| p.to_string()),
            sent.as_ref().map_or_else(|| "not run".into(), |o| exit_of(o).to_string()),
            g.files.len()
        ),
        sent.as_ref().is_some_and(|o| o.status.success()) && held == g.files.len() as u64,
    );
    Ok(())
}

/// Süd's route forwards the study it received for treatment to its PACS.
fn forwarded(r: &mut Recorder<'_>, leg: &PacsLeg, sued: &Path, generated_dir: &Path) -> Result<(), ScenarioError> {
    let want = data_sets(generated_dir)?;
    let start = Instant::now();
    let mut queue = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        let out = process::run(sued, &["gateway", "queue", "--json"])?;
        queue = json_lines(&out.stdout).into_iter().map(|(_, v)| v).collect();
        if queue.iter().any(|v| v["state"] == "sent") && files_under(&leg.received).len() >= want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = data_sets(&leg.received)?;
    let sent = queue.iter().any(|v| v["state"] == "sent");
    r.check(
        "Universitätsklinikum Süd's route forwards the study received for treatment to Süd's PACS (dcmtk storescp)",
        "queued as the transfer completes, sent by C-STORE; the PACS holds every object, data set identical to Nord's",
        format!(
            "queue {}; the PACS holds {} of {} objects, {} identical, after {:.1} s",
            if sent { "sent" } else { "not sent" },
            got.len(),
            want.len(),
            if got == want { "all" } else { "not all" },
            start.elapsed().as_secs_f64()
        ),
        sent && got == want,
    );
    Ok(())
}
