//! `medmesh consent`: record, import, list, withdraw and check patient consent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use medmesh_node::api::routes::{ConsentsAdd, ConsentsCheck, ConsentsImportFhir, ConsentsList, ConsentsWithdraw};
use medmesh_node::api::{ConsentListRequest, WithdrawRequest};
use medmesh_node::consent::{CheckQuery, ConsentCheck, ConsentEntry, FhirImport, NewConsent};
use medmesh_node::consent_schema::{
    ConsentRecord, ConsentedBy, Coverage, DeidLevel, ModalityScope, Provision, Purpose, RecipientScope, Role,
};

use crate::output::{Out, Table};
use crate::session::Session;
use crate::{HomeArgs, PatientFilter};

/// De-identification level, weakest to strongest.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Level {
    /// Data as held, with direct identifiers.
    Identifiable,
    /// Identifiers replaced by keyed pseudonyms; the holder can re-link.
    Pseudonymised,
    /// Identifiers removed; no way back to the patient.
    Anonymised,
}

impl From<Level> for DeidLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Identifiable => DeidLevel::Identifiable,
            Level::Pseudonymised => DeidLevel::Pseudonymised,
            Level::Anonymised => DeidLevel::Anonymised,
        }
    }
}

/// Who gave the consent.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum By {
    /// The patient.
    Patient,
    /// A legal guardian or representative.
    Guardian,
    /// An ethics-board waiver (research, per the site policy).
    Waiver,
}

impl From<By> for ConsentedBy {
    fn from(b: By) -> Self {
        match b {
            By::Patient => ConsentedBy::Patient,
            By::Guardian => ConsentedBy::LegalGuardian,
            By::Waiver => ConsentedBy::EthicsBoardWaiver,
        }
    }
}

fn purpose(s: &str) -> Result<Purpose> {
    s.parse::<Purpose>().map_err(|e| anyhow::anyhow!("{e}"))
}

fn role(s: &str) -> Result<Role> {
    s.parse::<Role>().map_err(|e| anyhow::anyhow!("{e}"))
}

fn mapping(s: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| anyhow::anyhow!("{s:?}: write REFERENCE=VALUE (see --help)"))
}

/// `medmesh consent add`.
#[derive(Args)]
pub(crate) struct AddArgs {
    #[command(flatten)]
    home: HomeArgs,
    /// Patient ID (0010,0020).
    #[arg(long, value_name = "ID")]
    patient_id: String,
    /// Issuer of Patient ID (0010,0021) qualifying --patient-id.
    #[arg(long, value_name = "ISSUER", default_value = "")]
    issuer: String,
    /// Purposes, comma-separated: treatment, second-opinion, research,
    /// teaching, quality, public-health.
    #[arg(long, value_delimiter = ',', required = true, value_parser = purpose, value_name = "P[,P]")]
    purpose: Vec<Purpose>,
    /// A recipient node, by peer id (repeatable).
    #[arg(long, value_delimiter = ',', value_name = "PEER_ID")]
    recipient_peer: Vec<String>,
    /// A recipient country, ISO 3166-1 alpha-2 (repeatable).
    #[arg(long, value_delimiter = ',', value_name = "CC")]
    recipient_jurisdiction: Vec<String>,
    /// A recipient institution, as its certificate names it (repeatable).
    #[arg(long, value_name = "NAME")]
    recipient_institution: Vec<String>,
    /// Every member of a consortium, by consortium id (repeatable).
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    recipient_consortium: Vec<String>,
    /// Modalities covered, comma-separated defined terms of Modality
    /// (0008,0060), PS3.3 C.7.3.1.1.1 (CT, MR, US, SR, ...), any case.
    #[arg(long, value_delimiter = ',', value_name = "M[,M]", value_parser = parse_modality)]
    modality: Vec<String>,
    /// Only this study, by Study Instance UID (repeatable).
    #[arg(long, value_delimiter = ',', value_name = "UID")]
    study: Vec<String>,
    /// Only the studies of this episode of care (their Admission ID, 0038,0010).
    #[arg(long, value_name = "ID", conflicts_with = "study")]
    episode: Option<String>,
    /// The weakest de-identification level the consent accepts (a permit needs one).
    #[arg(long, value_enum, required_unless_present = "deny")]
    level: Option<Level>,
    /// Record an objection: transfers in scope are refused, whatever else permits them.
    #[arg(long, conflicts_with = "level")]
    deny: bool,
    /// Valid from (default: now).
    #[arg(long, value_name = "DATE")]
    from: Option<String>,
    /// Valid until (default: until withdrawn).
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// Only studies acquired from this date.
    #[arg(long, value_name = "DATE")]
    data_from: Option<String>,
    /// Only studies acquired until this date.
    #[arg(long, value_name = "DATE")]
    data_until: Option<String>,
    /// Who consented.
    #[arg(long, value_enum, default_value = "patient")]
    by: By,
    /// Legal basis code, e.g. GDPR-9.2.a (default for EU/EEA and US sites
    /// by --by; required elsewhere).
    #[arg(long, value_name = "CODE")]
    legal_basis: Option<String>,
    /// Legal basis in words.
    #[arg(long, value_name = "TEXT")]
    legal_text: Option<String>,
    /// The consent's id (e.g. the number of the signed form); default: a fresh c-… id.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ConsentCommand {
    /// Record a patient's consent (a permit, or with --deny an objection).
    ///
    /// The patient is named by Patient ID and Issuer of Patient ID as the
    /// PACS holds them; both are hashed into the node's keyed pseudonym on
    /// entry and never stored. Scope flags left out mean "any": no
    /// --recipient-* flag, any trusted recipient; no --modality, every
    /// modality; no --study or --episode, the whole record. Dates are UTC
    /// days (2026-03-01; --until and --data-until include that whole day) or
    /// RFC 3339 times. Prints the new consent's id; --json prints {"id": ...}.
    Add(Box<AddArgs>),
    /// Import HL7 FHIR R4 Consent resources (JSON, one per file), all or nothing.
    ///
    /// What cannot be mapped faithfully is refused with the element that
    /// stops it, and nothing of the import is stored. The patient is matched
    /// by Consent.patient.identifier.value qualified by --issuer (or
    /// --issuer-for), or by a reference mapped with --patient.
    ImportFhir {
        #[command(flatten)]
        home: HomeArgs,
        /// Files, each one Consent resource.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Issuer of Patient ID (0010,0021) your PACS uses for these patient
        /// identifiers (and for the IDs of --patient).
        #[arg(long, value_name = "ISSUER", default_value = "")]
        issuer: String,
        /// Maps an identifier system to the Issuer of Patient ID it stands
        /// for: SYSTEM=ISSUER (repeatable). When given, identifiers of any
        /// other system are refused (a national or insurance number is not
        /// the PACS's Patient ID).
        #[arg(long, value_parser = mapping, value_name = "SYSTEM=ISSUER")]
        issuer_for: Vec<(String, String)>,
        /// Maps a patient reference to the Patient ID it stands for, for
        /// resources whose patient has no identifier: REF=ID, e.g.
        /// Patient/p-1001=MRN-0042 (repeatable).
        #[arg(long, value_parser = mapping, value_name = "REF=ID")]
        patient: Vec<(String, String)>,
        /// Maps an EpisodeOfCare reference to the Admission ID (0038,0010) of
        /// its studies: REF=ADMISSION_ID (repeatable). Episodes named by
        /// reference and not mapped are refused.
        #[arg(long, value_parser = mapping, value_name = "REF=ID")]
        episode: Vec<(String, String)>,
        /// A reference or identifier value denoting this site, for custodian
        /// (CST) actors, e.g. Organization/f001 (repeatable).
        #[arg(long, value_name = "REF")]
        custodian: Vec<String>,
        /// Maps a recipient actor to a recipient: REF=peer:ID, REF=institution:NAME,
        /// REF=jurisdiction:CC or REF=consortium:ID (repeatable).
        #[arg(long, value_parser = mapping, value_name = "REF=KIND:VALUE")]
        recipient: Vec<(String, String)>,
        /// The level imported permits require (FHIR does not carry one).
        #[arg(long, value_enum, default_value = "identifiable")]
        level: Level,
        /// Who consented when a resource names no performer.
        #[arg(long, value_enum)]
        assume_by: Option<By>,
        /// Purposes given to permits that name none (FHIR reads those as
        /// every purpose; without this flag they are refused).
        #[arg(long, value_delimiter = ',', value_parser = purpose, value_name = "P[,P]")]
        default_purpose: Vec<Purpose>,
        /// UTC offset in which dates without a time are read, e.g. +01:00 (default UTC).
        #[arg(long, value_name = "OFFSET", allow_hyphen_values = true)]
        utc_offset: Option<String>,
        /// Replace consents already on record with the same id.
        #[arg(long)]
        replace: bool,
    },
    /// List consents with their state now (in-force, not-yet-valid, expired, withdrawn).
    List {
        #[command(flatten)]
        home: HomeArgs,
        #[command(flatten)]
        patient: PatientFilter,
    },
    /// Withdraw a consent now: every later request is decided without it.
    Withdraw {
        #[command(flatten)]
        home: HomeArgs,
        /// The consent id.
        id: String,
    },
    /// Decide, without sending anything, whether a study may go to a peer for
    /// a purpose: trust, then consent and site policy. Exit 0 allow, 1 deny
    /// or needs approval, 2 error.
    Check {
        #[command(flatten)]
        home: HomeArgs,
        /// Study Instance UID.
        #[arg(long, value_name = "UID")]
        study: String,
        /// The receiving peer.
        #[arg(long, value_name = "PEER_ID")]
        peer: String,
        /// Why: treatment, second-opinion, research, teaching, quality, public-health.
        #[arg(long, value_parser = purpose)]
        purpose: Purpose,
        /// On whose behalf: clinician, radiologist, researcher, educator,
        /// quality-officer, public-health-officer, data-steward.
        #[arg(long, value_parser = role, default_value = "clinician")]
        role: Role,
        /// The level asked for (default: the weakest allowed).
        #[arg(long, value_enum)]
        level: Option<Level>,
    },
}

pub(crate) fn consent(cmd: ConsentCommand) -> Result<ExitCode> {
    match cmd {
        ConsentCommand::Add(args) => {
            let AddArgs {
                home,
                patient_id,
                issuer,
                purpose,
                recipient_peer,
                recipient_jurisdiction,
                recipient_institution,
                recipient_consortium,
                modality,
                study,
                episode,
                level,
                deny,
                from,
                until,
                data_from,
                data_until,
                by,
                legal_basis,
                legal_text,
                id,
            } = *args;
            let session = Session::open(home.dir()?)?;
            let e = session
                .call::<ConsentsAdd>(NewConsent {
                    id,
                    patient_id,
                    issuer,
                    by: by.into(),
                    deny,
                    level: level.map(Into::into),
                    purposes: purpose,
                    recipient_peers: recipient_peer,
                    recipient_institutions: recipient_institution,
                    recipient_jurisdictions: recipient_jurisdiction,
                    recipient_consortia: recipient_consortium,
                    modalities: modality,
                    studies: study,
                    episode,
                    from,
                    until,
                    data_from,
                    data_until,
                    legal_basis,
                    legal_text,
                })
                .context("recording the consent")?;
            if home.json {
                println!("{}", serde_json::json!({ "id": e.id }));
            } else {
                println!("{}", e.id);
                eprintln!("recorded: {}", describe(&e.record));
            }
            if e.studies == 0 {
                eprintln!(
                    "medmesh: warning: no stored study is covered by this consent yet; it covers studies whose \
                     Patient ID and Issuer of Patient ID are exactly --patient-id and --issuer, within its \
                     studies or episode, data period and modalities"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ConsentCommand::ImportFhir {
            home,
            files,
            issuer,
            issuer_for,
            patient,
            episode,
            custodian,
            recipient,
            level,
            assume_by,
            default_purpose,
            utc_offset,
            replace,
        } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let imported = session
                .call::<ConsentsImportFhir>(FhirImport {
                    files,
                    resources: Vec::new(),
                    issuer,
                    issuers: issuer_for,
                    patients: patient,
                    episodes: episode,
                    custodians: custodian,
                    recipients: recipient,
                    level: Some(level.into()),
                    assume_by: assume_by.map(Into::into),
                    default_purposes: default_purpose,
                    utc_offset,
                    replace,
                })
                .context("importing FHIR consents (nothing was stored)")?;
            for i in imported.iter().filter(|i| i.studies == 0) {
                eprintln!(
                    "medmesh: warning: {}: no study of its patient is on record yet (check --issuer, --issuer-for, --patient)",
                    i.id
                );
            }
            out.list("consent-imported", &imported, || {
                let mut s = String::new();
                for i in &imported {
                    s.push_str(&format!(
                        "{:<9} {} from {}: {}\n",
                        i.outcome,
                        i.id,
                        i.file.display(),
                        describe(&i.record)
                    ));
                }
                s.push_str(&format!("{} consent records\n", imported.len()));
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ConsentCommand::List { home, patient } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let list = session
                .call::<ConsentsList>(ConsentListRequest {
                    patient: patient.get().map(|(p, i)| (p.to_string(), i.to_string())),
                })
                .context("listing consents")?;
            out.list("consent", &list, || render_list(&list))?;
            Ok(ExitCode::SUCCESS)
        }
        ConsentCommand::Withdraw { home, id } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let e = session
                .call::<ConsentsWithdraw>(WithdrawRequest { id })
                .context("withdrawing the consent")?;
            out.emit("consent", &e, || {
                format!(
                    "consent {} withdrawn at {}\n",
                    e.id,
                    e.record.withdrawn_at().map(|t| t.to_rfc3339()).unwrap_or_default()
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ConsentCommand::Check {
            home,
            study,
            peer,
            purpose,
            role,
            level,
        } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let report = session
                .call::<ConsentsCheck>(CheckQuery {
                    study_uid: study,
                    peer_id: peer,
                    purpose,
                    role: Some(role),
                    level: level.map(Into::into),
                })
                .context("checking consent")?;
            out.emit("consent-check", &report, || render_check(&report))?;
            Ok(if report.allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn provision(r: &ConsentRecord) -> String {
    match r.provision() {
        Provision::Permit { level } => format!("permit {level}"),
        Provision::Deny => "deny".into(),
    }
}

fn purposes(r: &ConsentRecord) -> String {
    r.scope()
        .purposes
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn recipients(r: &ConsentRecord) -> String {
    match &r.scope().recipients {
        RecipientScope::Any => "any".into(),
        RecipientScope::Only(set) => set.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
    }
}

fn modalities(r: &ConsentRecord) -> String {
    match &r.scope().modalities {
        ModalityScope::All => "all".into(),
        ModalityScope::Only(set) => set.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
    }
}

fn coverage(r: &ConsentRecord) -> String {
    match &r.scope().coverage {
        Coverage::WholeRecord => "whole record".into(),
        Coverage::Studies(s) => format!(
            "studies {}",
            s.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        ),
        Coverage::Episode(e) => format!("episode {e}"),
    }
}

fn by(r: &ConsentRecord) -> &'static str {
    match r.consented_by() {
        ConsentedBy::Patient => "patient",
        ConsentedBy::LegalGuardian => "guardian",
        ConsentedBy::EthicsBoardWaiver => "waiver",
        _ => "other",
    }
}

/// One line for people.
fn describe(r: &ConsentRecord) -> String {
    format!(
        "{} for {} by {}; recipients {}; modalities {}; {}; valid {} to {}",
        provision(r),
        purposes(r),
        by(r),
        recipients(r),
        modalities(r),
        coverage(r),
        r.valid_from().to_rfc3339(),
        r.valid_until().map_or("withdrawal".into(), |t| t.to_rfc3339())
    )
}

fn render_list(list: &[ConsentEntry]) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "PATIENT",
        "STUDIES",
        "BY",
        "PROVISION",
        "PURPOSES",
        "RECIPIENTS",
        "MODALITIES",
        "COVERAGE",
        "FROM (UTC)",
        "ENDS (UTC)",
    ]);
    for e in list {
        let r = &e.record;
        table.row(vec![
            e.id.to_string(),
            e.status.clone(),
            r.patient().to_string()[..12].to_string(),
            e.studies.to_string(),
            by(r).into(),
            provision(r),
            purposes(r),
            recipients(r),
            modalities(r),
            coverage(r),
            r.valid_from().format("%Y-%m-%d %H:%M").to_string(),
            r.valid_until()
                .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
        ]);
    }
    table.render()
}

fn render_check(r: &ConsentCheck) -> String {
    let peer = match &r.peer {
        Some(p) => format!("{} ({}, {})", p.peer_id, p.institution, p.jurisdiction),
        None => "an unknown peer".into(),
    };
    let mut s = format!("{}: study {} to {} for {}\n", r.decision, r.study_uid, peer, r.purpose);
    for t in r.trust.iter().chain(&r.reasons).chain(&r.approval) {
        s.push_str(&format!("  - {} [{}]\n", t.text, t.code));
    }
    if let Some(g) = &r.grant {
        s.push_str(&format!(
            "  {} level {}, until {}, {} series; consents {}\n",
            if r.allowed() { "grant:" } else { "would grant:" },
            g.level,
            g.expires_at.to_rfc3339(),
            g.series.len(),
            g.consents.join(", ")
        ));
    }
    if !r.excluded_series.is_empty() {
        s.push_str(&format!(
            "  {} series without a valid Modality are never sent\n",
            r.excluded_series.len()
        ));
    }
    s.push_str(&format!(
        "  {} consents of this patient on record\n",
        r.consents_on_record
    ));
    s
}

/// `--modality`: a defined term, in any case; stored upper case.
fn parse_modality(s: &str) -> Result<String> {
    medmesh_node::consent_schema::Modality::defined(s)
        .map(|m| m.as_str().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))
}
