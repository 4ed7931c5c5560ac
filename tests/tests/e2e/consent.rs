//! Patient consent on a node: `consent add / list / withdraw / check /
//! import-fhir`, on the files and through a running node's admin API.

use std::path::{Path, PathBuf};
use std::process::Output;

use medmesh_testnet::cluster::{self, ClusterNode};

use crate::util::*;

const STUDY: &str = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";
const PATIENT_ID: &str = "1CT1";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn fhir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../consent-schema/tests/data/fhir")
        .join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A holder in DE with the CT study of patient 1CT1, and a recipient in FR
/// that the holder trusts directly for treatment, second opinions and research.
fn holder_and_recipient(dir: &Path) -> (PathBuf, PathBuf, String) {
    let holder = dir.join("holder");
    init_home(&holder, "Klinikum Nord", "DE").expect("init holder");
    let recipient = dir.join("recipient");
    init_home(&recipient, "Hôpital Sud", "FR").expect("init recipient");
    let ct = corpus().join("ct/ct_ge_small_explicit-le.dcm");
    expect_code(&run(&holder, &["study", "import", s(&ct)]).expect("run"), 0, "import");
    let record = recipient.join("node-record.cbor");
    let out = run(
        &holder,
        &[
            "trust",
            "add-peer",
            s(&record),
            "--purposes",
            "treatment,second-opinion,research",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "add-peer");
    let out = run(&recipient, &["id", "--json"]).expect("run");
    let peer = json_lines(&out.stdout)[0].1["peer_id"]
        .as_str()
        .expect("peer id")
        .to_string();
    (holder, recipient, peer)
}

/// `consent check --json`: the exit code and the report.
fn check(home: &Path, peer: &str, purpose: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "consent",
        "check",
        "--study",
        STUDY,
        "--peer",
        peer,
        "--purpose",
        purpose,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(home, &args).expect("run");
    let code = out.status.code().expect("exit code");
    assert!(code == 0 || code == 1, "check exit {code}: {}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "one record");
    assert_eq!(lines[0].0, "consent-check");
    (code, lines[0].1.clone())
}

fn codes(report: &serde_json::Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["code"].as_str().expect("code").to_string())
        .collect()
}

fn add(home: &Path, args: &[&str]) -> String {
    let mut all = vec!["consent", "add", "--patient-id", PATIENT_ID, "--json"];
    all.extend_from_slice(args);
    let out = run(home, &all).expect("run");
    expect_code(&out, 0, "consent add");
    // `--json` prints exactly {"id": ...}.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v.as_object().map(serde_json::Map::len), Some(1), "{v}");
    v["id"].as_str().expect("id").to_string()
}

fn listed(home: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["consent", "list", "--json"];
    args.extend_from_slice(extra);
    let out = run(home, &args).expect("run");
    expect_code(&out, 0, "consent list");
    json_lines(&out.stdout)
        .into_iter()
        .map(|(t, d)| {
            assert_eq!(t, "consent");
            d
        })
        .collect()
}

#[test]
fn consent_decides_what_may_leave_and_withdrawal_takes_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());

    // No consent: deny, with the reason.
    let (code, r) = check(&holder, &peer, "second-opinion", &[]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("deny")), "{r}");
    assert_eq!(codes(&r, "reasons"), ["no-consent"]);
    assert_eq!(r["peer"]["jurisdiction"], "FR");

    // A consent naming France for second opinions, identifiable.
    let second = add(
        &holder,
        &[
            "--purpose",
            "second-opinion,treatment",
            "--recipient-jurisdiction",
            "FR",
            "--level",
            "identifiable",
            "--until",
            "2099-12-31",
        ],
    );
    let (code, r) = check(&holder, &peer, "second-opinion", &[]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("allow")), "{r}");
    assert_eq!(
        r["grant"]["level"], "identifiable",
        "the consent names FR: no cross-border anonymisation"
    );
    assert_eq!(r["grant"]["consents"][0], second.as_str());
    assert_eq!(r["grant"]["series"].as_array().map(Vec::len), Some(1));
    // The requester may ask for more protection, never less than a rule needs.
    let (_, r) = check(&holder, &peer, "second-opinion", &["--level", "pseudonymised"]);
    assert_eq!(r["grant"]["level"], "pseudonymised", "{r}");

    // Research: a permit for any recipient, pseudonymised; the site policy
    // sends research to a human, and the transfer abroad must be anonymised.
    add(
        &holder,
        &[
            "--purpose",
            "research",
            "--level",
            "pseudonymised",
            "--modality",
            "CT,MR",
        ],
    );
    let (code, r) = check(&holder, &peer, "research", &[]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("needs-approval")), "{r}");
    assert_eq!(codes(&r, "approval"), ["purpose-requires-approval"]);
    assert_eq!(r["grant"]["level"], "anonymised", "{r}");

    // Teaching: the peer is not trusted for it, and no consent covers it.
    let (code, r) = check(&holder, &peer, "teaching", &[]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("deny")));
    assert_eq!(codes(&r, "trust"), ["purpose-not-trusted"]);
    assert!(codes(&r, "reasons").contains(&"purpose-not-covered".to_string()), "{r}");

    // An objection to second opinions on CT beats the permit; withdrawing it restores the allow.
    let objection = add(&holder, &["--purpose", "second-opinion", "--modality", "CT", "--deny"]);
    let (code, r) = check(&holder, &peer, "second-opinion", &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(codes(&r, "reasons"), ["denied-by-consent"]);
    expect_code(
        &run(&holder, &["consent", "withdraw", &objection]).expect("run"),
        0,
        "withdraw objection",
    );
    assert_eq!(check(&holder, &peer, "second-opinion", &[]).0, 0);

    // Withdrawing the permit takes effect for the next request.
    let out = run(&holder, &["consent", "withdraw", &second, "--json"]).expect("run");
    expect_code(&out, 0, "withdraw");
    assert_eq!(json_lines(&out.stdout)[0].1["status"], "withdrawn");
    let (code, r) = check(&holder, &peer, "second-opinion", &[]);
    assert_eq!(code, 1, "{r}");
    assert!(codes(&r, "reasons").contains(&"consent-withdrawn".to_string()), "{r}");

    // The list shows every record with its state, by pseudonym only.
    let all = listed(&holder, &[]);
    assert_eq!(all.len(), 3);
    let status = |id: &str| {
        all.iter()
            .find(|e| e["id"] == id)
            .map(|e| e["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status(&second).as_deref(), Some("withdrawn"));
    assert_eq!(status(&objection).as_deref(), Some("withdrawn"));
    let text = serde_json::to_string(&all).expect("json");
    assert!(!text.contains(PATIENT_ID), "raw patient ID in the listing");
    assert_eq!(listed(&holder, &["--patient-id", PATIENT_ID]).len(), 3);
    assert!(listed(&holder, &["--patient-id", "someone-else"]).is_empty());
    // Nor on disk: the patient ID is hashed on entry, consents are sealed.
    let db = std::fs::read(holder.join("db/medmesh.redb")).expect("db");
    assert!(!db.windows(PATIENT_ID.len()).any(|w| w == PATIENT_ID.as_bytes()));

    // The site policy in config.toml decides too: without approval for
    // research and with pseudonymisation enough abroad, research is allowed.
    let config = holder.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace(
            "cross_border_level = \"anonymised\"",
            "cross_border_level = \"pseudonymised\"",
        )
        .replace(
            "approval_required = [\"research\", \"teaching\"]",
            "approval_required = []",
        );
    std::fs::write(&config, text).expect("write config");
    let (code, r) = check(&holder, &peer, "research", &[]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("allow")), "{r}");
    assert_eq!(r["grant"]["level"], "pseudonymised", "{r}");
    let err = stderr(
        &run(
            &holder,
            &[
                "consent",
                "add",
                "--patient-id",
                "nobody-here",
                "--purpose",
                "treatment",
                "--level",
                "anonymised",
            ],
        )
        .expect("run"),
    );
    assert!(err.contains("no stored study is covered by this consent"), "{err}");
}

/// `[[policy.role_rule]]` in config.toml: the requesting role decides, only
/// ever more strictly, and the reasons read well in `consent check`.
#[test]
fn role_rules_of_the_policy_decide_on_the_requesting_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());
    add(
        &holder,
        &[
            "--purpose",
            "treatment,research",
            "--recipient-jurisdiction",
            "FR",
            "--level",
            "identifiable",
        ],
    );
    // No rules: the role decides nothing.
    for role in ["clinician", "researcher"] {
        let (code, _) = check(&holder, &peer, "treatment", &["--role", role]);
        assert_eq!(code, 0, "{role}");
    }
    let config = holder.join("config.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(
        "\n[[policy.role_rule]]\nrole = \"researcher\"\npurpose = \"treatment\"\neffect = \"deny\"\n\
         \n[[policy.role_rule]]\nrole = \"clinician\"\nmodality = [\"CT\"]\neffect = \"allow\"\n\
         min_level = \"pseudonymised\"\napproval = true\n",
    );
    std::fs::write(&config, text).expect("write config");

    let (code, r) = check(&holder, &peer, "treatment", &["--role", "researcher"]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("deny")), "{r}");
    assert_eq!(codes(&r, "reasons"), ["denied-by-role-rule"]);
    assert_eq!(
        r["reasons"][0]["text"],
        "site policy does not let role researcher receive this study for treatment (policy.role_rule #1)"
    );
    let (code, r) = check(&holder, &peer, "treatment", &["--role", "clinician"]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("needs-approval")), "{r}");
    assert_eq!(codes(&r, "approval"), ["role-requires-approval"]);
    assert_eq!(r["grant"]["level"], "pseudonymised", "{r}");
    // A rule never lifts what consent and policy require: research still
    // goes to a person by approval_required, and no rule matches it.
    let (code, r) = check(&holder, &peer, "research", &["--role", "researcher"]);
    assert_eq!((code, r["decision"].as_str()), (1, Some("needs-approval")), "{r}");
    assert_eq!(codes(&r, "approval"), ["purpose-requires-approval"]);
    // Other roles are unchanged.
    let (code, r) = check(&holder, &peer, "treatment", &["--role", "radiologist"]);
    assert_eq!((code, r["grant"]["level"].as_str()), (0, Some("identifiable")), "{r}");

    // A misspelt rule is an error that names it.
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[[policy.role_rule]]\nrole = \"*\"\nmodality = []\neffect = \"deny\"\n");
    std::fs::write(&config, text).expect("write config");
    let out = run(
        &holder,
        &[
            "consent",
            "check",
            "--study",
            STUDY,
            "--peer",
            &peer,
            "--purpose",
            "treatment",
        ],
    )
    .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty list"), "{}", stderr(&out));
}

#[test]
fn bad_input_is_named_and_unknown_peers_and_studies_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());
    for (args, needles) in [
        (
            vec![
                "--purpose",
                "research",
                "--level",
                "anonymised",
                "--recipient-jurisdiction",
                "UK",
            ],
            vec!["recipient-jurisdiction", "GB"],
        ),
        (
            vec!["--purpose", "marketing", "--level", "anonymised"],
            vec!["marketing"],
        ),
        (vec!["--purpose", "research"], vec!["--level"]),
        (
            vec![
                "--purpose",
                "research",
                "--level",
                "anonymised",
                "--from",
                "2027-01-01",
                "--until",
                "2026-01-01",
            ],
            // The option and the dates as typed (issue 16: not `valid_until`).
            vec!["until: 2026-01-01 is not after --from 2027-01-01"],
        ),
        (
            vec![
                "--purpose",
                "research",
                "--level",
                "anonymised",
                "--until",
                "31/12/2026",
            ],
            vec!["until", "31/12/2026"],
        ),
        (
            vec![
                "--purpose",
                "research",
                "--level",
                "anonymised",
                "--recipient-peer",
                "hospital-x",
            ],
            vec!["recipient-peer", "not a peer id"],
        ),
        (
            vec![
                "--purpose",
                "research",
                "--level",
                "anonymised",
                "--study",
                "ImagingStudy/7",
            ],
            vec!["study", "Study Instance UID"],
        ),
        (
            vec!["--purpose", "research", "--by", "waiver", "--deny"],
            vec!["waiver"],
        ),
    ] {
        let mut all = vec!["consent", "add", "--patient-id", PATIENT_ID];
        all.extend_from_slice(&args);
        let out = run(&holder, &all).expect("run");
        expect_code(&out, 2, &format!("{args:?}"));
        let err = stderr(&out);
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    }
    assert!(listed(&holder, &[]).is_empty(), "nothing stored by refused commands");

    // A peer never met and not trusted directly: deny, saying why.
    let stranger = dir.path().join("stranger");
    init_home(&stranger, "Elsewhere", "US").expect("init");
    let out = run(&stranger, &["id", "--json"]).expect("run");
    let stranger_id = json_lines(&out.stdout)[0].1["peer_id"]
        .as_str()
        .expect("peer id")
        .to_string();
    let (code, r) = check(&holder, &stranger_id, "treatment", &[]);
    assert_eq!(code, 1);
    assert_eq!(codes(&r, "trust"), ["unknown-peer"]);
    assert!(r["grant"].is_null());

    // An unknown study is an error (exit 2) naming it.
    let out = run(
        &holder,
        &[
            "consent",
            "check",
            "--study",
            "1.2.3.4",
            "--peer",
            &peer,
            "--purpose",
            "treatment",
        ],
    )
    .expect("run");
    expect_code(&out, 2, "unknown study");
    assert!(stderr(&out).contains("1.2.3.4"), "{}", stderr(&out));
    // A malformed peer id is a usage error, not a deny.
    let out = run(
        &holder,
        &[
            "consent",
            "check",
            "--study",
            STUDY,
            "--peer",
            "hospital-x",
            "--purpose",
            "treatment",
        ],
    )
    .expect("run");
    expect_code(&out, 2, "malformed peer");
    assert!(stderr(&out).contains("peer: \"hospital-x\""), "{}", stderr(&out));
    let out = run(&holder, &["consent", "withdraw", "c-nope"]).expect("run");
    expect_code(&out, 2, "unknown consent");
    assert!(stderr(&out).contains("c-nope"));
}

#[test]
fn fhir_import_is_all_or_nothing_and_never_revives_a_withdrawal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, _peer) = holder_and_recipient(dir.path());
    let research = fhir("synthetic/imaging-research-permit.json");
    let treatment = fhir("synthetic/imaging-treatment-with-deny.json");
    let refused = fhir("Consent-consent-example-notThis.json");
    let base = [
        "consent",
        "import-fhir",
        "--issuer",
        "KLINIKUM",
        "--custodian",
        "Organization/site",
        "--patient",
        "Patient/p-1001=MRN-0042",
        "--json",
    ];
    let import = |extra: &[&str], files: &[&Path]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        args.extend(files.iter().map(|f| s(f)));
        run(&holder, &args).expect("run")
    };

    // An episode named by reference must be mapped to an Admission ID.
    let out = import(&[], &[&research, &treatment]);
    expect_code(&out, 2, "unmapped episode");
    assert!(stderr(&out).contains("EpisodeOfCare/stay-2026-17"), "{}", stderr(&out));
    assert!(listed(&holder, &[]).is_empty(), "nothing stored");

    let mapped = ["--episode", "EpisodeOfCare/stay-2026-17=A-2026-17"];
    let out = import(&mapped, &[&research, &treatment]);
    expect_code(&out, 0, "import");
    let lines = json_lines(&out.stdout);
    let ids: Vec<&str> = lines.iter().map(|(_, d)| d["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["mm-research-7", "mm-treat-3", "mm-treat-3/provision[0]"]);
    assert!(
        lines
            .iter()
            .all(|(t, d)| t == "consent-imported" && d["outcome"] == "added")
    );
    let deny = &lines[2].1["record"];
    assert_eq!(deny["provision"], "deny");
    assert_eq!(deny["scope"]["coverage"]["episode"], "A-2026-17");
    assert!(
        !out.stdout.windows(8).any(|w| w == b"MRN-0042"),
        "raw identifier in the output"
    );

    // The same import again changes nothing.
    let out = import(&mapped, &[&research, &treatment]);
    expect_code(&out, 0, "re-import");
    assert!(json_lines(&out.stdout).iter().all(|(_, d)| d["outcome"] == "unchanged"));

    // One refused resource: the error names the file and the element, nothing is stored.
    let out = import(&mapped, &[&research, &refused]);
    expect_code(&out, 2, "refused resource");
    let err = stderr(&out);
    assert!(
        err.contains("Consent-consent-example-notThis.json") && err.contains("Consent."),
        "{err}"
    );
    assert!(err.contains("nothing was stored"), "{err}");
    assert_eq!(
        listed(&holder, &["--patient-id", "MRN-0042", "--issuer", "KLINIKUM"]).len(),
        3
    );

    // A changed resource replaces the record only when asked to.
    let mut changed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&research).expect("read")).expect("JSON");
    changed["provision"]["period"]["end"] = "2029-12-31".into();
    let changed_file = dir.path().join("research-v2.json");
    std::fs::write(&changed_file, changed.to_string()).expect("write");
    let out = import(&mapped, &[&changed_file]);
    expect_code(&out, 2, "changed without --replace");
    assert!(stderr(&out).contains("already on record"), "{}", stderr(&out));
    let out = import(&[&mapped[..], &["--replace"]].concat(), &[&changed_file]);
    expect_code(&out, 0, "--replace");
    assert_eq!(json_lines(&out.stdout)[0].1["outcome"], "replaced");

    // With --issuer-for, identifiers of other systems are refused.
    let out = import(&["--issuer-for", "urn:oid:9.9.9=OTHER", "--replace"], &[&changed_file]);
    expect_code(&out, 2, "identifier of an undeclared system");
    assert!(stderr(&out).contains("cannot match this patient"), "{}", stderr(&out));
    let out = import(
        &["--issuer-for", "urn:oid:1.2.276.0.76.3.1.404=KLINIKUM", "--replace"],
        &[&changed_file],
    );
    expect_code(&out, 0, "declared system");
    assert_eq!(
        json_lines(&out.stdout)[0].1["outcome"],
        "unchanged",
        "same issuer, same pseudonym"
    );

    // A withdrawn consent is not revived by importing it again.
    expect_code(
        &run(&holder, &["consent", "withdraw", "mm-treat-3"]).expect("run"),
        0,
        "withdraw",
    );
    let out = import(&[&mapped[..], &["--replace"]].concat(), &[&treatment]);
    expect_code(&out, 2, "replace withdrawn");
    assert!(stderr(&out).contains("withdrawn"), "{}", stderr(&out));
    let now = listed(&holder, &[]);
    let treat = now.iter().find(|e| e["id"] == "mm-treat-3").expect("listed");
    assert_eq!(treat["status"], "withdrawn");
}

#[test]
fn consent_commands_go_through_a_running_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());
    cluster::configure_loopback(&holder, &[]).expect("config");
    let mut node = ClusterNode::for_home("holder", &holder).expect("node");
    cluster::start_node(&mut node).expect("start");
    // No passphrase: these can only work through the admin API.
    let api = |args: &[&str]| {
        medmesh(&holder)
            .expect("cmd")
            .env_remove("MEDMESH_PASSPHRASE")
            .args(args)
            .output()
            .expect("run")
    };
    let out = api(&[
        "consent",
        "add",
        "--patient-id",
        PATIENT_ID,
        "--purpose",
        "treatment",
        "--recipient-peer",
        &peer,
        "--level",
        "identifiable",
        "--json",
    ]);
    expect_code(&out, 0, "add via API");
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let check = |purpose: &str| {
        api(&[
            "consent",
            "check",
            "--study",
            STUDY,
            "--peer",
            &peer,
            "--purpose",
            purpose,
            "--json",
        ])
    };
    let out = check("treatment");
    expect_code(&out, 0, "allow via API");
    assert_eq!(json_lines(&out.stdout)[0].1["grant"]["level"], "identifiable");
    let fhir_file = fhir("synthetic/imaging-research-permit.json");
    let out = api(&[
        "consent",
        "import-fhir",
        "--issuer",
        "KLINIKUM",
        "--custodian",
        "Organization/site",
        s(&fhir_file),
    ]);
    expect_code(&out, 0, "import-fhir via API");
    expect_code(&api(&["consent", "withdraw", &id]), 0, "withdraw via API");
    expect_code(&check("treatment"), 1, "deny after withdrawal via API");
    let out = api(&["consent", "list", "--json"]);
    expect_code(&out, 0, "list via API");
    assert_eq!(json_lines(&out.stdout).len(), 2);
    cluster::stop_node(&mut node);
    let log = std::fs::read_to_string(holder.join("node.log")).expect("node log");
    assert!(
        log.contains("consent recorded") && log.contains("consent withdrawn"),
        "{log}"
    );
    assert!(!log.contains(PATIENT_ID), "the patient ID reached the node's log");
}

/// Issue 16 item 8: a FHIR Consent's id (the hospital's own resource id)
/// and a consent id typed with --id never reach a ledger entry: entries name
/// the consent's keyed reference.
#[test]
fn consent_ids_never_reach_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());
    let research = fhir("synthetic/imaging-research-permit.json");
    let out = run(
        &holder,
        &[
            "consent",
            "import-fhir",
            "--issuer",
            "KLINIKUM",
            "--custodian",
            "Organization/site",
            "--patient",
            "Patient/p-1001=MRN-0042",
            "--episode",
            "EpisodeOfCare/stay-2026-17=A-2026-17",
            s(&research),
        ],
    )
    .expect("run");
    expect_code(&out, 0, "import-fhir");
    expect_code(
        &run(&holder, &["consent", "withdraw", "mm-research-7"]).expect("run"),
        0,
        "withdraw the FHIR consent",
    );
    let out = run(
        &holder,
        &[
            "consent",
            "add",
            "--id",
            "c-typed-by-hand",
            "--patient-id",
            PATIENT_ID,
            "--purpose",
            "treatment",
            "--recipient-peer",
            &peer,
            "--level",
            "identifiable",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "consent add --id");
    expect_code(
        &run(&holder, &["consent", "withdraw", "c-typed-by-hand"]).expect("run"),
        0,
        "withdraw",
    );
    let out = run(&holder, &["log", "tail", "--limit", "1000", "--json"]).expect("run");
    expect_code(&out, 0, "log tail");
    let entries = json_lines(&out.stdout);
    let consent_entries: Vec<_> = entries
        .iter()
        .filter(|(_, d)| d.to_string().contains("consent-"))
        .collect();
    assert!(consent_entries.len() >= 3, "consent entries written: {entries:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ["mm-research-7", "c-typed-by-hand"] {
        assert!(!text.contains(id), "the ledger names consent {id}:\n{text}");
    }
    // Nor does any file of the home hold it in plaintext (the ledger rows included).
    for f in files_under(&holder) {
        let bytes = std::fs::read(&f).expect("read");
        for id in ["mm-research-7", "c-typed-by-hand"] {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "{} holds {id}",
                f.display()
            );
        }
    }
}

/// Issue 16 item 10: `--modality` takes the defined terms in any case and
/// refuses others with near matches; `--until` errors name the option and
/// the date as typed; `consent list` counts the studies the consent covers.
#[test]
fn consent_add_speaks_the_users_terms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _recipient, peer) = holder_and_recipient(dir.path());
    let base = |extra: &[&str]| {
        let mut args = vec![
            "consent",
            "add",
            "--patient-id",
            PATIENT_ID,
            "--purpose",
            "treatment",
            "--recipient-peer",
            &peer,
            "--level",
            "identifiable",
        ];
        args.extend_from_slice(extra);
        run(&holder, &args).expect("run")
    };
    let out = base(&["--modality", "CTT"]);
    expect_code(&out, 2, "CTT");
    let err = stderr(&out);
    assert!(
        err.contains("\"CTT\" is not a DICOM modality") && err.contains("CT"),
        "{err}"
    );
    let out = base(&["--modality", "mr", "--id", "c-mr"]);
    expect_code(&out, 0, "lower case");
    assert!(stderr(&out).contains("MR"), "{}", stderr(&out));

    let out = base(&["--from", "2026-03-05", "--until", "2026-03-01"]);
    expect_code(&out, 2, "until before from");
    let err = stderr(&out);
    assert!(
        err.contains("until: 2026-03-01 is not after --from 2026-03-05"),
        "{err}"
    );
    assert!(!err.contains("valid_until") && !err.contains("2026-03-02"), "{err}");

    // The CT study of the patient: an MR-only consent covers none of it.
    let out = run(&holder, &["consent", "list", "--json"]).expect("run");
    let listed = json_lines(&out.stdout);
    let mr = listed.iter().find(|(_, d)| d["id"] == "c-mr").expect("c-mr listed");
    assert_eq!(mr.1["studies"], 0, "{}", mr.1);
    let out = base(&["--modality", "ct", "--id", "c-ct"]);
    expect_code(&out, 0, "ct");
    let out = run(&holder, &["consent", "list", "--json"]).expect("run");
    let listed = json_lines(&out.stdout);
    let ct = listed.iter().find(|(_, d)| d["id"] == "c-ct").expect("c-ct listed");
    assert_eq!(ct.1["studies"], 1, "{}", ct.1);
}
