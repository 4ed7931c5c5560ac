//! The tables that drive de-identification, compiled into the binary from
//! `node/data/deid/` (derived by `scripts/derive-deid-tables.py` from public
//! machine-readable copies of the standard; see `node/data/deid/SOURCE.md`):
//!
//! - `annex-e.csv`: PS3.15 Table E.1-1, the basic profile action of every
//!   attribute and what each option does to it;
//! - `sop-classes.csv` and `iod-types.csv`: the Composite IOD of each SOP
//!   class and, for the attributes whose action is a combined code (X/Z,
//!   X/D, Z/D, X/Z/D, X/Z/U*), their Type in that IOD at each nesting path,
//!   which decides the action as PS3.15 E.1.1 says;
//! - `safe-private.csv`: PS3.15 Table E.3.10-1, the private attributes that
//!   Retain Safe Private keeps;
//! - `medmesh-additions.csv`: medmesh's own rows, in the same columns, for
//!   attributes the table does not list but that carry identifying content
//!   (Text Value of content items, Retrieve URL and Retrieve URI).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use dicom_core::Tag;

use super::{DeidError, DeidOption, TableCause};

const ANNEX_E: &str = include_str!("../../data/deid/annex-e.csv");
const SOP_CLASSES: &str = include_str!("../../data/deid/sop-classes.csv");
const IOD_TYPES: &str = include_str!("../../data/deid/iod-types.csv");
const SAFE_PRIVATE: &str = include_str!("../../data/deid/safe-private.csv");
const ADDITIONS: &str = include_str!("../../data/deid/medmesh-additions.csv");

/// An action of Table E.1-1, after combined codes are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// D: replace with a non-zero-length dummy value.
    Dummy,
    /// Z: replace with a zero-length value.
    Zero,
    /// X: remove.
    Remove,
    /// K: keep.
    Keep,
    /// C: clean (replace identifying content, keep the meaning).
    Clean,
    /// U: replace UIDs with consistently mapped ones.
    Uid,
}

/// The basic-profile column of a row: a plain action or a combined code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    /// One action whatever the IOD.
    Plain(Action),
    /// Z unless D is required (Type 1).
    ZD,
    /// X unless D is required (Type 1 or 2).
    XD,
    /// X unless Z is required (Type 2).
    XZ,
    /// X unless Z (Type 2) or D (Type 1) is required.
    XZD,
    /// X unless Z (Type 2) or replacing the contained UIDs (Type 1) is required.
    XZU,
}

impl Basic {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "D" => Basic::Plain(Action::Dummy),
            "Z" => Basic::Plain(Action::Zero),
            "X" => Basic::Plain(Action::Remove),
            "K" => Basic::Plain(Action::Keep),
            "C" => Basic::Plain(Action::Clean),
            "U" => Basic::Plain(Action::Uid),
            "Z/D" => Basic::ZD,
            "X/D" => Basic::XD,
            "X/Z" => Basic::XZ,
            "X/Z/D" => Basic::XZD,
            "X/Z/U*" => Basic::XZU,
            _ => return None,
        })
    }

    /// Whether the IOD's Type decides the action.
    #[must_use]
    pub fn is_combined(self) -> bool {
        !matches!(self, Basic::Plain(_))
    }

    /// The action for an attribute of Type `ty` in the object's IOD (`None`
    /// when the IOD does not have it there, which allows removal), per
    /// PS3.15 E.1.1: "X unless Z is required to maintain IOD conformance
    /// (Type 3 versus Type 2)", and so on.
    #[must_use]
    pub fn resolve(self, ty: Option<AttrType>) -> Action {
        use AttrType::{One, Three, Two};
        let ty = ty.unwrap_or(Three);
        match (self, ty) {
            (Basic::Plain(a), _) => a,
            (Basic::ZD, One) => Action::Dummy,
            (Basic::ZD, _) => Action::Zero,
            (Basic::XD, One | Two) => Action::Dummy,
            (Basic::XD, Three) => Action::Remove,
            // Z is the least that a Type 1 attribute can get here; the table
            // gives X/Z only to attributes that are never Type 1.
            (Basic::XZ, One | Two) => Action::Zero,
            (Basic::XZ, Three) => Action::Remove,
            (Basic::XZD, One) => Action::Dummy,
            (Basic::XZD, Two) => Action::Zero,
            (Basic::XZD, Three) => Action::Remove,
            (Basic::XZU, One) => Action::Uid,
            (Basic::XZU, Two) => Action::Zero,
            (Basic::XZU, Three) => Action::Remove,
        }
    }

    /// The code as the standard writes it.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Basic::Plain(Action::Dummy) => "D",
            Basic::Plain(Action::Zero) => "Z",
            Basic::Plain(Action::Remove) => "X",
            Basic::Plain(Action::Keep) => "K",
            Basic::Plain(Action::Clean) => "C",
            Basic::Plain(Action::Uid) => "U",
            Basic::ZD => "Z/D",
            Basic::XD => "X/D",
            Basic::XZ => "X/Z",
            Basic::XZD => "X/Z/D",
            Basic::XZU => "X/Z/U*",
        }
    }
}

/// An attribute's Type in an IOD, conditional types counted as their base
/// type (the attribute is present, so its condition held).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttrType {
    /// Type 1 or 1C: required, non-empty.
    One,
    /// Type 2 or 2C: required, may be empty.
    Two,
    /// Type 3: optional.
    Three,
}

impl AttrType {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1" | "1C" => Some(AttrType::One),
            "2" | "2C" => Some(AttrType::Two),
            "3" => Some(AttrType::Three),
            _ => None,
        }
    }
}

/// Which attributes a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One tag.
    Exact(Tag),
    /// `(50xx,xxxx)`: every element of the curve groups 5000–501E.
    Curve,
    /// `(60xx,eeee)`: element `eeee` of the overlay groups 6000–601E.
    Overlay(u16),
    /// `(gggg,eeee) gggg odd`: every private attribute.
    Private,
}

/// One row of Table E.1-1.
#[derive(Debug, Clone)]
pub struct Row {
    /// The attributes it covers.
    pub pattern: Pattern,
    /// Keyword (PS3.6), or a name derived from the table's when PS3.6 has none.
    pub keyword: String,
    /// Basic profile action.
    pub basic: Basic,
    /// What each option does to the attribute (`K` or `C`), where it changes the basic action.
    pub options: Vec<(DeidOption, Action)>,
}

impl Row {
    /// The action for this attribute under `options`, with `ty` its Type in
    /// the object's IOD. An option's K or C replaces the basic action; when
    /// two chosen options disagree, C (clean) wins over K (keep).
    #[must_use]
    pub fn action(&self, options: &[DeidOption], ty: Option<AttrType>) -> Action {
        let mut chosen = None;
        for (opt, act) in &self.options {
            if options.contains(opt) {
                chosen = match (chosen, act) {
                    (Some(Action::Clean), _) => Some(Action::Clean),
                    (_, a) => Some(*a),
                };
            }
        }
        chosen.unwrap_or_else(|| self.basic.resolve(ty))
    }
}

/// The loaded tables.
#[derive(Debug)]
pub struct Tables {
    exact: HashMap<Tag, Row>,
    /// medmesh's rows for attributes Table E.1-1 does not list.
    additions: HashMap<Tag, Row>,
    curve: Option<Row>,
    overlay: HashMap<u16, Row>,
    private: Option<Row>,
    sop_to_ciod: HashMap<String, String>,
    iod_types: HashMap<(String, String), AttrType>,
    safe_private: HashSet<(String, u16, u8)>,
    version: String,
    rows: usize,
}

const OPTION_COLUMNS: [(&str, DeidOption); 10] = [
    ("retain_safe_private", DeidOption::RetainSafePrivate),
    ("retain_uids", DeidOption::RetainUids),
    ("retain_device_identity", DeidOption::RetainDeviceIdentity),
    ("retain_institution_identity", DeidOption::RetainInstitutionIdentity),
    (
        "retain_patient_characteristics",
        DeidOption::RetainPatientCharacteristics,
    ),
    ("retain_long_full_dates", DeidOption::RetainLongFullDates),
    ("retain_long_modified_dates", DeidOption::RetainLongModifiedDates),
    ("clean_descriptors", DeidOption::CleanDescriptors),
    ("clean_structured_content", DeidOption::CleanStructuredContent),
    ("clean_graphics", DeidOption::CleanGraphics),
];

fn table_err(file: &str, line: usize, why: impl Into<TableCause>) -> DeidError {
    DeidError::Table {
        file: file.to_string(),
        line,
        reason: Box::new(why.into()),
    }
}

/// One CSV record: its line and its values by column name.
type Record = (usize, HashMap<String, String>);

/// Reads a CSV file with a header into maps of column name to value.
fn records(file: &'static str, text: &str) -> Result<Vec<Record>, DeidError> {
    let mut reader = csv::ReaderBuilder::new().comment(None).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| table_err(file, 1, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| table_err(file, i + 2, e))?;
        let map = headers
            .iter()
            .cloned()
            .zip(rec.iter().map(str::to_string))
            .collect::<HashMap<_, _>>();
        out.push((i + 2, map));
    }
    Ok(out)
}

fn col<'a>(file: &str, line: usize, m: &'a HashMap<String, String>, name: &str) -> Result<&'a str, DeidError> {
    m.get(name).map(String::as_str).ok_or_else(|| {
        table_err(
            file,
            line,
            TableCause::NoColumn {
                column: name.to_string(),
            },
        )
    })
}

fn hex16(file: &str, line: usize, s: &str) -> Result<u16, DeidError> {
    u16::from_str_radix(s, 16).map_err(|_| table_err(file, line, TableCause::Hex { cell: s.to_string() }))
}

fn parse_pattern(file: &str, line: usize, tag: &str) -> Result<Pattern, DeidError> {
    if tag.contains("gggg") {
        return Ok(Pattern::Private);
    }
    let inner = tag
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| table_err(file, line, TableCause::Tag { cell: tag.to_string() }))?;
    let (g, e) = inner
        .split_once(',')
        .ok_or_else(|| table_err(file, line, TableCause::Tag { cell: tag.to_string() }))?;
    if g.eq_ignore_ascii_case("50xx") {
        return Ok(Pattern::Curve);
    }
    if g.eq_ignore_ascii_case("60xx") {
        return Ok(Pattern::Overlay(hex16(file, line, e)?));
    }
    Ok(Pattern::Exact(Tag(hex16(file, line, g)?, hex16(file, line, e)?)))
}

/// One row of Table E.1-1 (or of medmesh's additions, same columns).
fn parse_row(file: &str, line: usize, m: &HashMap<String, String>) -> Result<Row, DeidError> {
    let pattern = parse_pattern(file, line, col(file, line, m, "tag")?)?;
    let basic_s = col(file, line, m, "basic_profile")?;
    let basic = Basic::parse(basic_s).ok_or_else(|| {
        table_err(
            file,
            line,
            TableCause::Action {
                cell: basic_s.to_string(),
            },
        )
    })?;
    let mut options = Vec::new();
    for (name, opt) in OPTION_COLUMNS {
        match col(file, line, m, name)? {
            "" => {}
            "K" => options.push((opt, Action::Keep)),
            "C" => options.push((opt, Action::Clean)),
            other => {
                return Err(table_err(
                    file,
                    line,
                    TableCause::Flag {
                        column: name.to_string(),
                        cell: other.to_string(),
                    },
                ));
            }
        }
    }
    Ok(Row {
        pattern,
        keyword: col(file, line, m, "keyword")?.to_string(),
        basic,
        options,
    })
}

fn load() -> Result<Tables, DeidError> {
    let mut t = Tables {
        exact: HashMap::new(),
        additions: HashMap::new(),
        curve: None,
        overlay: HashMap::new(),
        private: None,
        sop_to_ciod: HashMap::new(),
        iod_types: HashMap::new(),
        safe_private: HashSet::new(),
        version: String::new(),
        rows: 0,
    };
    const F: &str = "annex-e.csv";
    for (line, m) in records(F, ANNEX_E)? {
        let row = parse_row(F, line, &m)?;
        t.rows += 1;
        match row.pattern {
            Pattern::Exact(tag) => {
                if t.exact.insert(tag, row).is_some() {
                    return Err(table_err(F, line, TableCause::TagTwice { tag: tag.to_string() }));
                }
            }
            Pattern::Curve => t.curve = Some(row),
            Pattern::Overlay(e) => {
                t.overlay.insert(e, row);
            }
            Pattern::Private => t.private = Some(row),
        }
    }
    const A: &str = "medmesh-additions.csv";
    for (line, m) in records(A, ADDITIONS)? {
        let row = parse_row(A, line, &m)?;
        let Pattern::Exact(tag) = row.pattern else {
            return Err(table_err(A, line, TableCause::AdditionTags));
        };
        if t.exact.contains_key(&tag) || t.additions.insert(tag, row).is_some() {
            return Err(table_err(A, line, TableCause::Added { tag: tag.to_string() }));
        }
    }
    const S: &str = "sop-classes.csv";
    for (line, m) in records(S, SOP_CLASSES)? {
        t.sop_to_ciod.insert(
            col(S, line, &m, "sop_class_uid")?.to_string(),
            col(S, line, &m, "ciod")?.to_string(),
        );
    }
    const I: &str = "iod-types.csv";
    for (line, m) in records(I, IOD_TYPES)? {
        let ty_s = col(I, line, &m, "type")?;
        let ty =
            AttrType::parse(ty_s).ok_or_else(|| table_err(I, line, TableCause::Type { cell: ty_s.to_string() }))?;
        let key = (
            col(I, line, &m, "ciod")?.to_string(),
            col(I, line, &m, "path")?.to_uppercase(),
        );
        let e = t.iod_types.entry(key).or_insert(ty);
        *e = (*e).min(ty);
    }
    const P: &str = "safe-private.csv";
    for (line, m) in records(P, SAFE_PRIVATE)? {
        let group = hex16(P, line, col(P, line, &m, "group")?)?;
        let el = col(P, line, &m, "element")?;
        let offset = u8::from_str_radix(el.trim_start_matches("xx").trim_start_matches("XX"), 16)
            .map_err(|_| table_err(P, line, TableCause::Element { cell: el.to_string() }))?;
        t.safe_private
            .insert((creator_key(col(P, line, &m, "creator")?), group, offset));
    }
    let hash = blake3::hash(ANNEX_E.as_bytes()).to_hex();
    let added = blake3::hash(ADDITIONS.as_bytes()).to_hex();
    t.version = format!(
        "PS3.15 Table E.1-1 2024b with the 2026c rows; annex-e.csv BLAKE3 {}; medmesh-additions.csv BLAKE3 {}",
        &hash[..16],
        &added[..16]
    );
    Ok(t)
}

/// A private creator as compared: trimmed, upper case.
#[must_use]
pub fn creator_key(s: &str) -> String {
    s.trim_matches(|c: char| c == ' ' || c == '\0').to_uppercase()
}

static TABLES: OnceLock<Result<Tables, DeidError>> = OnceLock::new();

/// The tables, loaded once.
///
/// # Errors
/// [`DeidError::Table`] when the embedded data does not parse (a build of
/// medmesh with broken data files; the tests catch it).
pub fn tables() -> Result<&'static Tables, DeidError> {
    match TABLES.get_or_init(load) {
        Ok(t) => Ok(t),
        Err(e) => Err(DeidError::Table {
            file: "node/data/deid".into(),
            line: 0,
            reason: Box::new(TableCause::Load(e)),
        }),
    }
}

impl Tables {
    /// The row of Table E.1-1 for `tag`, or else medmesh's addition for
    /// it (`medmesh-additions.csv`), if any.
    #[must_use]
    pub fn row(&self, tag: Tag) -> Option<&Row> {
        if let Some(r) = self.exact.get(&tag).or_else(|| self.additions.get(&tag)) {
            return Some(r);
        }
        let g = tag.group();
        if g % 2 == 1 {
            return self.private.as_ref();
        }
        if (0x5000..=0x501E).contains(&g) {
            return self.curve.as_ref();
        }
        if (0x6000..=0x601E).contains(&g) {
            return self.overlay.get(&tag.element());
        }
        None
    }

    /// Every row of Table E.1-1 with its own tag (wildcard rows excluded).
    pub fn exact_rows(&self) -> impl Iterator<Item = (&Tag, &Row)> {
        self.exact.iter()
    }

    /// medmesh's rows for attributes that Table E.1-1 does not list.
    pub fn additions(&self) -> impl Iterator<Item = (&Tag, &Row)> {
        self.additions.iter()
    }

    /// The Composite IOD of a SOP class, when the tables know it.
    #[must_use]
    pub fn ciod(&self, sop_class_uid: &str) -> Option<&str> {
        self.sop_to_ciod.get(sop_class_uid).map(String::as_str)
    }

    /// The Type of the attribute at `path` (tags from the data set root) in `ciod`.
    #[must_use]
    pub fn attr_type(&self, ciod: &str, path: &[Tag]) -> Option<AttrType> {
        let p = path
            .iter()
            .map(|t| format!("{:04X}{:04X}", t.group(), t.element()))
            .collect::<Vec<_>>()
            .join("/");
        self.iod_types.get(&(ciod.to_string(), p)).copied()
    }

    /// Whether a private attribute (its creator, group and element offset
    /// within the creator's block) is on the safe list of Table E.3.10-1.
    #[must_use]
    pub fn is_safe_private(&self, creator: &str, group: u16, offset: u8) -> bool {
        self.safe_private.contains(&(creator_key(creator), group, offset))
    }

    /// What the rows are and where they come from, for attestations.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of rows of Table E.1-1.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Never: the table has rows.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}
