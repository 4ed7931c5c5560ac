//! `scenario all`: every scenario, one after another, each in its own
//! folder, in one report. A scenario that cannot run at all is reported as
//! failed with its error, and the others still run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Step;
use super::load::LoadOptions;
use super::scale::ScaleOptions;

/// The sizes of the scenarios that have one.
#[derive(Debug, Clone)]
pub struct AllOptions {
    /// Nodes of `scenario ledger`.
    pub ledger_nodes: usize,
    /// `scenario scale`.
    pub scale: ScaleOptions,
    /// `scenario load`.
    pub load: LoadOptions,
}

impl AllOptions {
    /// The sizes of the scenarios' own defaults (32 nodes, 200 studies).
    #[must_use]
    pub fn full() -> Self {
        Self {
            ledger_nodes: 4,
            scale: ScaleOptions {
                nodes: 32,
                entries: 20,
                spacing: Duration::from_millis(1000),
                poll: Duration::from_millis(50),
                seed: 1,
            },
            load: LoadOptions::default(),
        }
    }

    /// Reduced for a 2-core CI machine: 8 nodes of `scale` timing 5
    /// entries, 30 studies of `load`; the full sizes run in `bench/`.
    #[must_use]
    pub fn reduced() -> Self {
        let full = Self::full();
        Self {
            scale: ScaleOptions {
                nodes: 8,
                entries: 5,
                ..full.scale
            },
            load: LoadOptions {
                studies: 30,
                ..full.load
            },
            ..full
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRun {
    /// `transfer`, `ledger`, `scale`, `partition`, `load`.
    pub name: String,
    /// Every step passed (and it ran).
    pub pass: bool,
    /// Wall time.
    pub seconds: f64,
    /// Its steps.
    pub steps: Vec<Step>,
    /// What it measured (its `timings` or `figures`).
    pub figures: serde_json::Value,
    /// Why it could not run, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The scenarios `run` runs, in order.
pub const NAMES: [&str; 5] = ["transfer", "ledger", "scale", "partition", "load"];

/// Runs every scenario in `dir/<name>`, calling `on_step` with the
/// scenario's name and each step as it is decided.
#[must_use]
pub fn run(dir: &Path, opts: &AllOptions, on_step: &mut dyn FnMut(&str, &Step)) -> Vec<ScenarioRun> {
    let mut out = Vec::new();
    for name in NAMES {
        let sub = dir.join(name);
        let start = Instant::now();
        let mut step = |s: &Step| on_step(name, s);
        let result: Result<(Vec<Step>, serde_json::Value), super::ScenarioError> = match name {
            "transfer" => super::transfer(&sub, &mut step).map(|steps| (steps, serde_json::Value::Null)),
            "ledger" => super::ledger::run(&sub, opts.ledger_nodes, &mut step)
                .map(|r| (r.steps, serde_json::to_value(r.timings).unwrap_or_default())),
            "scale" => super::scale::run(&sub, &opts.scale, &mut step, &mut |_| {})
                .map(|r| (r.steps, serde_json::to_value(r.figures).unwrap_or_default())),
            "partition" => super::partition::run(&sub, &mut step)
                .map(|r| (r.steps, serde_json::to_value(r.figures).unwrap_or_default())),
            _ => super::load::run(&sub, &opts.load, &mut step)
                .map(|r| (r.steps, serde_json::to_value(r.figures).unwrap_or_default())),
        };
        let seconds = start.elapsed().as_secs_f64();
        out.push(match result {
            Ok((steps, figures)) => ScenarioRun {
                name: name.into(),
                pass: !steps.is_empty() && steps.iter().all(|s| s.pass),
                seconds,
                steps,
                figures,
                error: None,
            },
            Err(e) => ScenarioRun {
                name: name.into(),
                pass: false,
                seconds,
                steps: Vec::new(),
                figures: serde_json::Value::Null,
                error: Some(e.to_string()),
            },
        });
    }
    out
}
