//! Running real `medmesh` processes: locate (and if needed build) the
//! binary, create node homes in temporary folders, run commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The passphrase test homes use, unless `MEDMESH_PASSPHRASE` is set.
pub const TEST_PASSPHRASE: &str = "medmesh testnet passphrase";

/// Errors of running `medmesh`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The binary could not be found or built.
    #[error("cannot find or build the medmesh binary: {0}")]
    Binary(String),
    /// Spawning failed.
    #[error("cannot run medmesh: {0}")]
    Spawn(#[from] std::io::Error),
}

/// The `medmesh` binary in the running executable's target folder. The
/// first call runs `cargo build` (a no-op when it is up to date), so tests
/// never run a stale binary (tests build it with the `fault-injection`
/// feature, as `scripts/test.sh` builds the workspace); `MEDMESH_BIN`
/// overrides the path.
///
/// # Errors
/// [`ProcessError::Binary`] when it can be neither found nor built.
pub fn medmesh_bin() -> Result<PathBuf, ProcessError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MEDMESH_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        let mut dir = exe.parent().map(Path::to_path_buf).ok_or("no parent folder")?;
        let test = dir.ends_with("deps");
        if test {
            dir.pop();
        }
        let bin = dir.join("medmesh");
        if std::env::var_os("CARGO").is_some() || !bin.exists() {
            let release = dir.ends_with("release");
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "--quiet", "--locked"]);
            if release {
                cmd.args(["-p", "medmesh", "--release"]);
            } else if test {
                // A test: the binary carries the fault-injection hooks (inactive
                // unless MEDMESH_FAULT is set), built with the very features of
                // the workspace's test build (`scripts/test.sh`), so that no
                // dependency is compiled a second time with others.
                cmd.args([
                    "--workspace",
                    "--bins",
                    "--tests",
                    "--features",
                    "medmesh/fault-injection",
                ]);
            } else {
                cmd.args(["-p", "medmesh"]);
            }
            let status = cmd.status().map_err(|e| e.to_string())?;
            if !status.success() || !bin.exists() {
                return Err(format!("cargo build -p medmesh failed; expected {}", bin.display()));
            }
        }
        Ok(bin)
    })
    .clone()
    .map_err(ProcessError::Binary)
}

/// The passphrase for test homes.
#[must_use]
pub fn passphrase() -> String {
    std::env::var("MEDMESH_PASSPHRASE").unwrap_or_else(|_| TEST_PASSPHRASE.into())
}

/// A `medmesh` command for `home`, with the test passphrase in its environment.
///
/// # Errors
/// [`ProcessError::Binary`].
pub fn medmesh(home: &Path) -> Result<Command, ProcessError> {
    let mut cmd = Command::new(medmesh_bin()?);
    cmd.env("MEDMESH_HOME", home)
        .env("MEDMESH_PASSPHRASE", passphrase())
        .env_remove("MEDMESH_LOG");
    Ok(cmd)
}

/// Runs `medmesh ARGS` against `home` and returns its output.
///
/// # Errors
/// [`ProcessError`].
pub fn run(home: &Path, args: &[&str]) -> Result<Output, ProcessError> {
    Ok(medmesh(home)?.args(args).output()?)
}

/// Creates a node home at `home` (`medmesh init`).
///
/// # Errors
/// [`ProcessError`], or a spawn error carrying init's stderr when it fails.
pub fn init_home(home: &Path, institution: &str, jurisdiction: &str) -> Result<Output, ProcessError> {
    let out = run(
        home,
        &["init", "--institution", institution, "--jurisdiction", jurisdiction],
    )?;
    if !out.status.success() {
        return Err(ProcessError::Spawn(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).to_string(),
        )));
    }
    Ok(out)
}

/// Parses JSON Lines output into `(type, data)` pairs.
#[must_use]
pub fn json_lines(stdout: &[u8]) -> Vec<(String, serde_json::Value)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["type"].as_str().unwrap_or_default().to_string(), v["data"].clone()))
        .collect()
}
