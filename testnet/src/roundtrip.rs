//! The round trip: one node home, the repository's DICOM corpus and a
//! generated study imported into the encrypted store, exported again and
//! compared byte for byte, with tampering and plaintext checks. Every step
//! runs the real `medmesh` binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::process::{self, json_lines};
use crate::{StudySpec, generate};

/// One step of a report: what was expected, what was observed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// What the step does.
    pub step: String,
    /// What should happen.
    pub expected: String,
    /// What happened.
    pub observed: String,
    /// Whether it matched.
    pub pass: bool,
}

/// Errors that stop the round trip before it can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundtripError {
    /// Running `medmesh` failed.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// Generating the synthetic study failed.
    #[error(transparent)]
    Gen(#[from] crate::GenError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> RoundtripError {
    RoundtripError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The repository's DICOM corpus.
#[must_use]
pub fn repo_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("data")
        .join("corpus")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn hash_file(p: &Path) -> Result<String, RoundtripError> {
    Ok(blake3::hash(&std::fs::read(p).map_err(|e| io(p, e))?)
        .to_hex()
        .to_string())
}

fn step(steps: &mut Vec<Step>, name: &str, expected: &str, observed: String, pass: bool) {
    steps.push(Step {
        step: name.into(),
        expected: expected.into(),
        observed,
        pass,
    });
}

/// Runs the round trip in `dir` (which must be empty or absent) and returns its steps.
///
/// # Errors
/// [`RoundtripError`] when a step cannot run at all (a failed check is a
/// failed step, not an error).
pub fn run(dir: &Path, slices: u32) -> Result<Vec<Step>, RoundtripError> {
    let mut steps = Vec::new();
    let home = dir.join("node-1");
    let init = process::run(
        &home,
        &[
            "init",
            "--institution",
            "Klinikum Testnet",
            "--jurisdiction",
            "DE",
            "--json",
        ],
    )?;
    let peer = json_lines(&init.stdout)
        .first()
        .map(|(_, d)| d["peer_id"].as_str().unwrap_or_default().to_string());
    step(
        &mut steps,
        "create a node home (Ed25519 identity, X25519 key, Argon2id-protected master key)",
        "exit 0, a peer id",
        format!(
            "exit {:?}, peer id {}",
            init.status.code(),
            peer.clone().unwrap_or_default()
        ),
        init.status.success() && peer.is_some_and(|p| p.starts_with("12D3KooW")),
    );

    let corpus = repo_corpus();
    let out = process::run(&home, &["study", "import", "--json", &corpus.to_string_lossy()])?;
    let mut outcome: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (kind, data) in json_lines(&out.stdout) {
        if kind == "file" {
            outcome.insert(data["path"].as_str().unwrap_or_default().to_string(), data);
        }
    }
    let manifest: serde_json::Value = std::fs::read_to_string(corpus.join("manifest.json"))
        .map_err(|e| io(&corpus, e))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| io(&corpus, std::io::Error::other(e))))?;
    let (mut malformed, mut malformed_rejected, mut imported) = (0, 0, 0);
    for f in manifest["files"].as_array().into_iter().flatten() {
        let path = corpus
            .join(f["path"].as_str().unwrap_or_default())
            .to_string_lossy()
            .to_string();
        let status = outcome
            .get(&path)
            .and_then(|o| o["status"].as_str())
            .unwrap_or("missing");
        if f["status"] == "malformed" {
            malformed += 1;
            malformed_rejected += usize::from(status == "rejected");
        }
        imported += usize::from(status == "imported");
    }
    step(
        &mut steps,
        "import the repository's DICOM corpus (real files from pydicom, dcm_qa, deid-data...)",
        "valid files stored sealed; every malformed file rejected with its reason",
        format!("{imported} imported; {malformed_rejected} of {malformed} malformed rejected"),
        imported >= 80 && malformed_rejected == malformed,
    );

    let gen_dir = dir.join("generated");
    let spec = StudySpec {
        seed: 1,
        slices,
        ..StudySpec::default()
    };
    let study = generate(&spec, &gen_dir)?;
    let out = process::run(&home, &["study", "import", "--json", &gen_dir.to_string_lossy()])?;
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .map(|(_, d)| d);
    let n = summary.as_ref().and_then(|s| s["imported"].as_u64()).unwrap_or(0);
    step(
        &mut steps,
        &format!("import a generated CT study ({slices} slices of 512x512, fake patient data)"),
        &format!("{slices} imported"),
        format!("{n} imported ({} bytes)", study.total_bytes),
        out.status.success() && n == u64::from(slices),
    );

    let again = process::run(&home, &["study", "import", "--json", &gen_dir.to_string_lossy()])?;
    let summary = json_lines(&again.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .map(|(_, d)| d);
    let (new, already) = summary
        .map(|s| {
            (
                s["imported"].as_u64().unwrap_or(99),
                s["already_stored"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((99, 0));
    step(
        &mut steps,
        "import the same study again",
        "nothing new stored",
        format!("{new} new, {already} already stored"),
        new == 0 && already == u64::from(slices),
    );

    let list = process::run(&home, &["study", "list", "--json"])?;
    let uids: Vec<String> = json_lines(&list.stdout)
        .into_iter()
        .map(|(_, d)| d["study_uid"].as_str().unwrap_or_default().to_string())
        .collect();
    let originals: BTreeSet<String> = outcome
        .iter()
        .filter(|(_, o)| o["status"] == "imported")
        .map(|(p, _)| hash_file(Path::new(p)))
        .chain(study.files.iter().map(|f| hash_file(f)))
        .collect::<Result<_, _>>()?;
    let export_dir = dir.join("export");
    let mut exported = BTreeSet::new();
    let mut failed_exports = 0;
    for (i, uid) in uids.iter().enumerate() {
        let target = export_dir.join(format!("{i:03}"));
        let out = process::run(&home, &["study", "export", uid, "--out", &target.to_string_lossy()])?;
        failed_exports += usize::from(!out.status.success());
        for f in files_under(&target) {
            exported.insert(hash_file(&f)?);
        }
    }
    step(
        &mut steps,
        "export every study (each object opened, AEAD and BLAKE3 verified)",
        "the exported files are byte-identical to the imported ones",
        format!(
            "{} studies, {} distinct files exported, {} match the originals, {failed_exports} failed",
            uids.len(),
            exported.len(),
            exported.intersection(&originals).count()
        ),
        failed_exports == 0 && exported == originals,
    );

    let blob = files_under(&home.join("blobs"))
        .into_iter()
        .find(|p| !p.starts_with(home.join("blobs").join("tmp")));
    let tamper = match blob {
        Some(blob) => {
            let original = std::fs::read(&blob).map_err(|e| io(&blob, e))?;
            let mut changed = original.clone();
            let i = changed.len() / 2;
            changed[i] ^= 0x01;
            std::fs::write(&blob, &changed).map_err(|e| io(&blob, e))?;
            let mut detected = 0;
            for uid in &uids {
                let out = process::run(
                    &home,
                    &[
                        "study",
                        "export",
                        uid,
                        "--out",
                        &dir.join("tamper").to_string_lossy(),
                        "--force",
                    ],
                )?;
                if out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("failed verification")
                {
                    detected += 1;
                }
            }
            std::fs::write(&blob, &original).map_err(|e| io(&blob, e))?;
            detected
        }
        None => 0,
    };
    step(
        &mut steps,
        "flip one bit of one stored blob, export again",
        "export fails for that object, naming it",
        format!("{tamper} export(s) refused the damaged object"),
        tamper == 1,
    );

    let needles: Vec<&str> = study
        .phi
        .identifiers()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.len() >= 6)
        .collect();
    let mut leaks = Vec::new();
    for f in files_under(&home) {
        let bytes = std::fs::read(&f).map_err(|e| io(&f, e))?;
        for n in &needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                leaks.push(f.display().to_string());
            }
        }
    }
    step(
        &mut steps,
        "search every byte under the node home for the generated patient's identifiers",
        "none found (names, IDs, dates, accession, institution are sealed or blind-indexed)",
        format!("{} identifiers searched, {} found", needles.len(), leaks.len()),
        leaks.is_empty() && !needles.is_empty(),
    );

    let check = process::run(&home, &["store", "check", "--deep", "--json"])?;
    let report = json_lines(&check.stdout)
        .into_iter()
        .next()
        .map(|(_, d)| d)
        .unwrap_or_default();
    step(
        &mut steps,
        "check the store (every index row has its blob, every blob opens with the recorded hash)",
        "consistent",
        format!(
            "{} instances, {} blob files, {} damaged, {} orphans",
            report["instances"],
            report["blob_files"],
            report["damaged"].as_array().map_or(0, Vec::len),
            report["orphan_blobs"].as_array().map_or(0, Vec::len)
        ),
        check.status.success(),
    );
    Ok(steps)
}
