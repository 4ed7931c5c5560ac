//! A headless Chromium for the web tests: Debian's `/usr/bin/chromium` (or `$CHROMIUM`)
//! driven by `tests/web/browser.mjs` (playwright-core) over JSON lines on its stdin and
//! stdout. Each [`Browser`] has its own profile (`--user-data-dir` in a temporary folder),
//! so tests run in parallel; it is stopped on drop (and exits by itself when its stdin
//! closes). It accepts the node's self-signed test certificate.
//!
//! Every method panics with the driver's message when the command fails (test code);
//! [`Browser::try_cmd`] returns the error instead. Selectors are Playwright selectors
//! (CSS by default, e.g. `#submit`, `text=Approve`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// How long one command may take before the test fails (navigation and waits have
/// their own, shorter timeouts in the driver).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Browser {
    child: Child,
    io: Mutex<Io>,
    _profile: tempfile::TempDir,
    log: PathBuf,
}

#[derive(Debug)]
struct Io {
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl Browser {
    /// Launches Chromium with a fresh profile and waits (30 s at most) until it is ready.
    pub fn start() -> Browser {
        let web = crate::idp::web_dir();
        let profile = tempfile::tempdir().expect("tempdir");
        let log = profile.path().join("driver.log");
        let stderr = std::fs::File::create(&log).expect("driver log");
        let mut child = Command::new("node")
            .arg(web.join("browser.mjs"))
            .arg(profile.path().join("chromium"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node tests/web/browser.mjs (is Node.js installed?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        let browser = Browser {
            child,
            io: Mutex::new(Io {
                stdin,
                lines: rx,
                next_id: 0,
            }),
            _profile: profile,
            log,
        };
        let ready = {
            let io = browser.io.lock().expect("browser io");
            io.lines.recv_timeout(Duration::from_secs(30))
        };
        match ready.ok().and_then(|l| serde_json::from_str::<Value>(&l).ok()) {
            Some(v) if v["ready"] == true => browser,
            other => panic!("browser.mjs did not start ({other:?}); its stderr:\n{}", browser.log()),
        }
    }

    /// What the driver and Chromium wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one command (`args` is a JSON object of its arguments); its value, or the
    /// driver's error message.
    pub fn try_cmd(&self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut io = self.io.lock().expect("browser io");
        io.next_id += 1;
        let id = io.next_id;
        let mut req = match args {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => panic!("arguments of {cmd} must be an object: {other}"),
        };
        req.insert("id".into(), id.into());
        req.insert("cmd".into(), cmd.into());
        let stdin = io.stdin.as_mut().expect("browser stdin");
        writeln!(stdin, "{}", Value::Object(req)).map_err(|e| format!("browser gone: {e}\n{}", self.log()))?;
        stdin.flush().map_err(|e| format!("browser gone: {e}"))?;
        loop {
            let line = io
                .lines
                .recv_timeout(COMMAND_TIMEOUT)
                .map_err(|e| format!("no answer to {cmd}: {e}\n{}", self.log()))?;
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
            if v["id"] != id {
                continue;
            }
            return if v["ok"] == true {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("unknown error").to_string())
            };
        }
    }

    fn cmd(&self, cmd: &str, args: Value) -> Value {
        self.try_cmd(cmd, args.clone())
            .unwrap_or_else(|e| panic!("browser {cmd} {args}: {e}"))
    }

    fn string(&self, cmd: &str, args: Value) -> String {
        self.cmd(cmd, args).as_str().map(str::to_string).unwrap_or_default()
    }

    /// Opens `url` and waits for its load event; the HTTP status of the last response.
    pub fn goto(&self, url: &str) -> Option<u16> {
        let v = self.cmd("goto", json!({ "url": url }));
        v["status"].as_u64().and_then(|s| u16::try_from(s).ok())
    }

    pub fn fill(&self, selector: &str, value: &str) {
        self.cmd("fill", json!({ "selector": selector, "value": value }));
    }

    /// Clicks without waiting for a navigation (see [`Browser::click_nav`]).
    pub fn click(&self, selector: &str) {
        self.cmd("click", json!({ "selector": selector }));
    }

    /// Clicks and waits until the navigation it starts has loaded; the new URL.
    pub fn click_nav(&self, selector: &str) -> String {
        self.cmd("click_nav", json!({ "selector": selector }))["url"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Presses a key (Playwright's names: `Enter`, `Tab`, `Escape`, ...) in an element.
    pub fn press(&self, selector: &str, key: &str) {
        self.cmd("press", json!({ "selector": selector, "key": key }));
    }

    /// The rendered text of the first match.
    pub fn text(&self, selector: &str) -> String {
        self.string("text", json!({ "selector": selector }))
    }

    /// The inner HTML of the first match.
    pub fn html(&self, selector: &str) -> String {
        self.string("html", json!({ "selector": selector }))
    }

    /// The whole document's HTML.
    pub fn content(&self) -> String {
        self.string("content", Value::Null)
    }

    /// How many elements match, now (no waiting).
    pub fn count(&self, selector: &str) -> u64 {
        self.cmd("count", json!({ "selector": selector })).as_u64().unwrap_or(0)
    }

    /// Waits (10 s at most) until a match is visible.
    pub fn wait_for(&self, selector: &str) {
        self.cmd("wait_for", json!({ "selector": selector, "timeout_ms": 10_000 }));
    }

    /// Waits (10 s at most) until the page's URL contains `part`; the URL.
    pub fn wait_url(&self, part: &str) -> String {
        self.cmd("wait_url", json!({ "contains": part, "timeout_ms": 10_000 }))["url"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn url(&self) -> String {
        self.string("url", Value::Null)
    }

    pub fn title(&self) -> String {
        self.string("title", Value::Null)
    }

    /// A PNG of the viewport (1280×900), or of the whole page when `full_page`.
    pub fn screenshot(&self, path: &Path, full_page: bool) {
        self.cmd("screenshot", json!({ "path": path, "full_page": full_page }));
    }

    /// The cookies of the browser (Playwright's objects: name, value, domain, path,
    /// expires, httpOnly, secure, sameSite).
    pub fn cookies(&self) -> Vec<Value> {
        match self.cmd("cookies", Value::Null) {
            Value::Array(a) => a,
            _ => Vec::new(),
        }
    }

    /// Adds cookies (objects as [`Browser::cookies`] returns them, or with a `url`).
    pub fn set_cookies(&self, cookies: &[Value]) {
        self.cmd("set_cookies", json!({ "cookies": cookies }));
    }

    pub fn clear_cookies(&self) {
        self.cmd("clear_cookies", Value::Null);
    }

    /// The JSON value of a JavaScript expression evaluated in the page.
    pub fn evaluate(&self, expression: &str) -> Value {
        self.cmd("evaluate", json!({ "expression": expression }))
    }

    /// The page's console messages and errors (`type: text`, `pageerror: ...`) since
    /// the last call.
    pub fn console(&self) -> Vec<String> {
        match self.cmd("console", Value::Null) {
            Value::Array(a) => a.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin lets the driver close Chromium (its profile's lock, its child
        // processes); kill it if it does not within 5 s.
        if let Ok(mut io) = self.io.lock() {
            drop(io.stdin.take());
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
