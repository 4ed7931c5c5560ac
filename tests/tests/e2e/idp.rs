//! A real OpenID provider for the web tests: `tests/web/idp.mjs` (the npm package
//! `oidc-provider`) on 127.0.0.1, its test users, and a small HTTP/1.1 client.
//!
//! [`Idp::start`] spawns `node tests/web/idp.mjs` with its stdin piped (the provider exits
//! when that closes, so a killed test leaves nothing running) and reads the issuer line.
//! Users, their passwords and one-time codes: `tests/web/README.md` and [`USERS`]; the
//! current code of a user is [`totp`]. Machine tokens (client_credentials, JWT):
//! [`Idp::machine_token`]. The tests at the end prove the IdP and the browser work without
//! a medmesh web server: discovery and keys, machine tokens' claims, and a browser login
//! with and without the second factor.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::browser::Browser;

/// `acr` of a login with password and one-time code.
pub const ACR_MFA: &str = "urn:medmesh:mfa";
/// `acr` of a login with the password only.
pub const ACR_PWD: &str = "urn:medmesh:pwd";
/// The resource indicator (RFC 8707) that names the node's API when `api_audience` is not
/// itself an absolute URI; tokens for it carry `aud` = `api_audience`.
pub const API_RESOURCE: &str = "urn:medmesh:api";
/// The scope the node's API requires.
pub const API_SCOPE: &str = "medmesh.api";
/// Another resource: a token for it has this `aud` (a wrong audience for the node).
pub const OTHER_RESOURCE: &str = "urn:medmesh:other-api";

/// A test user of the IdP: password `pw-<login>`, TOTP key `totp-<login>`.
#[derive(Debug, Clone, Copy)]
pub struct TestUser {
    pub login: &'static str,
    pub name: &'static str,
    pub roles: &'static [&'static str],
    /// Whether the user has a second factor (only `nomfa` has none).
    pub mfa: bool,
}

/// The IdP's fixed users (the same table as tests/web/idp.mjs and its README).
pub const USERS: &[TestUser] = &[
    TestUser {
        login: "steward",
        name: "Sam Steward",
        roles: &["data-steward"],
        mfa: true,
    },
    TestUser {
        login: "researcher",
        name: "Rae Researcher",
        roles: &["researcher"],
        mfa: true,
    },
    TestUser {
        login: "clinician",
        name: "Cleo Clinician",
        roles: &["clinician"],
        mfa: true,
    },
    TestUser {
        login: "radiologist",
        name: "Ray Radiologist",
        roles: &["radiologist"],
        mfa: true,
    },
    TestUser {
        login: "admin",
        name: "Ada Admin",
        roles: &["site-admin"],
        mfa: true,
    },
    TestUser {
        login: "privacy",
        name: "Pia Privacy",
        roles: &["privacy-officer"],
        mfa: true,
    },
    TestUser {
        login: "auditor",
        name: "Aud Auditor",
        roles: &["auditor"],
        mfa: true,
    },
    TestUser {
        login: "nomfa",
        name: "Noa Nomfa",
        roles: &["clinician"],
        mfa: false,
    },
];

/// The password of a test user.
pub fn password(login: &str) -> String {
    format!("pw-{login}")
}

/// The user's current one-time code: RFC 6238 TOTP, HMAC-SHA-256, 30 s steps, 6 digits,
/// key = the bytes of `totp-<login>` (the IdP also accepts the step before and after).
pub fn totp(login: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    totp_at(login, now / 30)
}

fn totp_at(login: &str, step: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, format!("totp-{login}").as_bytes());
    let mac = ring::hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let off = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([mac[off], mac[off + 1], mac[off + 2], mac[off + 3]]) & 0x7fff_ffff;
    format!("{:06}", bin % 1_000_000)
}

/// The `sub` the IdP gives a user: a UUID-shaped hash of the login, stable across runs.
pub fn subject_of(login: &str) -> String {
    let h = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        format!("medmesh-test-user:{login}").as_bytes(),
    ));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The configuration of an IdP (the environment of idp.mjs).
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// The confidential web client (client_secret_basic, code flow with PKCE S256).
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// `aud` of access tokens for the node's API.
    pub api_audience: String,
    /// Name of the roles claim in ID and access tokens.
    pub roles_claim: String,
    /// The client_credentials client (client_secret_basic).
    pub machine_client_id: String,
    pub machine_client_secret: String,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            client_id: "medmesh-console".into(),
            client_secret: "console-secret".into(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            api_audience: "medmesh-api".into(),
            roles_claim: "medmesh_roles".into(),
            machine_client_id: "medmesh-machine".into(),
            machine_client_secret: "machine-secret".into(),
        }
    }
}

/// tests/web, where idp.mjs and browser.mjs are; panics with the fix when its npm
/// packages are not installed.
pub fn web_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        dir.join("node_modules").join("oidc-provider").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/system-deps.sh does)",
        dir.display()
    );
    dir
}

/// A running idp.mjs; stopped on drop.
#[derive(Debug)]
pub struct Idp {
    child: Child,
    issuer: String,
    opts: IdpOptions,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Idp {
    /// Starts an IdP on an ephemeral port of 127.0.0.1 and waits (20 s at most) for its
    /// issuer line.
    pub fn start(opts: IdpOptions) -> Idp {
        let web = web_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("idp.log");
        let stderr = std::fs::File::create(&log).expect("idp log");
        let mut child = Command::new("node")
            .arg(web.join("idp.mjs"))
            .env("IDP_PORT", "0")
            .env("CLIENT_ID", &opts.client_id)
            .env("CLIENT_SECRET", &opts.client_secret)
            .env("REDIRECT_URIS", opts.redirect_uris.join(","))
            .env("POST_LOGOUT_REDIRECT_URIS", opts.post_logout_redirect_uris.join(","))
            .env("API_AUDIENCE", &opts.api_audience)
            .env("ROLES_CLAIM", &opts.roles_claim)
            .env("MACHINE_CLIENT_ID", &opts.machine_client_id)
            .env("MACHINE_CLIENT_SECRET", &opts.machine_client_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node tests/web/idp.mjs (is Node.js installed?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(line)) if !line.is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "idp.mjs gave no issuer line ({other:?}); its stderr:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("issuer line is JSON");
        let issuer = v["issuer"].as_str().expect("issuer").to_string();
        Idp {
            child,
            issuer,
            opts,
            _dir: dir,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn options(&self) -> &IdpOptions {
        &self.opts
    }

    /// What the IdP wrote on stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The discovery document.
    pub fn discovery(&self) -> serde_json::Value {
        let r = http_request(
            "GET",
            &format!("{}/.well-known/openid-configuration", self.issuer),
            &[],
            b"",
        )
        .expect("GET discovery");
        assert_eq!(r.status, 200, "discovery: {}", r.text());
        assert!(
            r.header("Content-Type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        r.json()
    }

    /// A token request at the token endpoint with client_secret_basic; the raw answer.
    pub fn token_request(&self, client_id: &str, secret: &str, form: &[(&str, &str)]) -> HttpResponse {
        let auth = format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")));
        http_request(
            "POST",
            &format!("{}/token", self.issuer),
            &[
                ("authorization", &auth),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form_encode(form).as_bytes(),
        )
        .expect("POST /token")
    }

    /// An access token (a JWT signed with a key of the IdP's jwks_uri) for the machine
    /// client by client_credentials. `role` (e.g. `auditor`) becomes the roles claim
    /// (`site-admin` when `None`); `scope` is the space-separated scope asked for, e.g.
    /// `medmesh.api`, `""` (a token without the API scope) or `medmesh.api ttl:1` (a token
    /// that expires after 1 s); `resource` is the resource indicator, [`API_RESOURCE`] when
    /// `None` (`aud` = `api_audience`); any other absolute URI gives a token with that
    /// `aud`, e.g. [`OTHER_RESOURCE`].
    pub fn machine_token(&self, role: Option<&str>, scope: &str, resource: Option<&str>) -> String {
        let mut scopes: Vec<String> = scope.split_whitespace().map(str::to_string).collect();
        if let Some(role) = role {
            scopes.push(format!("role:{role}"));
        }
        let scope = scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let r = self.token_request(&self.opts.machine_client_id, &self.opts.machine_client_secret, &form);
        assert_eq!(r.status, 200, "client_credentials: {}\n{}", r.text(), self.log());
        r.json()["access_token"].as_str().expect("access_token").to_string()
    }

    /// The authorization URL for the web client: code flow, PKCE S256, the given scope.
    pub fn authorization_url(&self, redirect_uri: &str, scope: &str, state: &str, nonce: &str, pkce: &Pkce) -> String {
        format!(
            "{}/auth?{}",
            self.issuer,
            form_encode(&[
                ("client_id", &self.opts.client_id),
                ("response_type", "code"),
                ("scope", scope),
                ("redirect_uri", redirect_uri),
                ("state", state),
                ("nonce", nonce),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ])
        )
    }

    /// Exchanges an authorization code of the web client; the token response.
    pub fn exchange_code(&self, code: &str, redirect_uri: &str, pkce: &Pkce) -> serde_json::Value {
        let r = self.token_request(
            &self.opts.client_id,
            &self.opts.client_secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &pkce.verifier),
            ],
        );
        assert_eq!(r.status, 200, "code exchange: {}\n{}", r.text(), self.log());
        r.json()
    }

    /// Fills and submits the IdP's login form in `browser` (which shows it): password,
    /// and the user's current one-time code when `with_otp`.
    pub fn log_in(browser: &Browser, login: &str, with_otp: bool) {
        browser.wait_for("#login");
        browser.fill("#login", login);
        browser.fill("#password", &password(login));
        browser.fill("#otp", &if with_otp { totp(login) } else { String::new() });
        browser.click_nav("#submit");
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
        Pkce { verifier, challenge }
    }
}

/// The claims of a JWT, not verified (the tests read what the IdP issued).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload")).expect("JSON payload")
}

/// The protected header of a JWT.
pub fn jwt_header(token: &str) -> serde_json::Value {
    let header = token.split('.').next().expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url header")).expect("JSON header")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `application/x-www-form-urlencoded` (also a URL's query).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(b)),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// Decodes a query string (`+` as space); repeated names keep their order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// One HTTP/1.1 request to an `http://host:port/path` URL (`Connection: close`).
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{m}: {url}"));
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A tiny HTTP server on 127.0.0.1 standing in for a relying party's redirect URI: it
/// answers every request with a short page and reports each request target
/// (`/path?query`) except `/favicon.ico`.
#[derive(Debug)]
pub struct Catcher {
    port: u16,
    rx: mpsc::Receiver<String>,
}

impl Catcher {
    pub fn start() -> Catcher {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, rx) = mpsc::channel();
        // The thread ends with the test process (tests run in one process; a blocked
        // accept costs nothing).
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let page = "<!DOCTYPE html><title>relying party</title><p id=\"rp\">received</p>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                if target != "/favicon.ico" && tx.send(target).is_err() {
                    return;
                }
            }
        });
        Catcher { port, rx }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next request target received, within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }
}

#[test]
fn totp_matches_the_idp_algorithm() {
    // RFC 6238 / RFC 4226 dynamic truncation over HMAC-SHA-256 of the step; the values
    // were computed with idp.mjs's function under node (the browser test checks the live
    // code against the running IdP).
    assert_eq!(totp_at("steward", 0), "454792");
    assert_eq!(totp_at("steward", 56_000_000), "057563");
    assert_eq!(totp_at("nomfa", 1), "005564");
    assert_eq!(totp("steward").len(), 6);
    assert_eq!(subject_of("steward"), "8cbe671c-dab9-0f71-176c-07a25ae89470");
    let subjects: std::collections::BTreeSet<String> = USERS.iter().map(|u| subject_of(u.login)).collect();
    assert_eq!(subjects.len(), USERS.len());
    let without: Vec<&str> = USERS.iter().filter(|u| !u.mfa).map(|u| u.login).collect();
    assert_eq!(without, ["nomfa"]);
}

#[test]
fn idp_serves_discovery_jwks_and_machine_tokens() {
    let idp = Idp::start(IdpOptions::default());
    let d = idp.discovery();
    assert_eq!(d["issuer"], idp.issuer());
    for (key, path) in [
        ("jwks_uri", "/jwks"),
        ("token_endpoint", "/token"),
        ("end_session_endpoint", "/session/end"),
    ] {
        assert_eq!(d[key], format!("{}{path}", idp.issuer()), "{key}");
    }
    assert!(
        d["code_challenge_methods_supported"]
            .as_array()
            .expect("array")
            .contains(&"S256".into())
    );
    let jwks = http_request("GET", d["jwks_uri"].as_str().expect("jwks_uri"), &[], b"")
        .expect("GET jwks")
        .json();
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "RSA");
    assert!(keys[0].get("d").is_none(), "the private part is not published");

    let token = idp.machine_token(Some("auditor"), API_SCOPE, None);
    let header = jwt_header(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], keys[0]["kid"]);
    let c = jwt_claims(&token);
    assert_eq!(c["iss"], idp.issuer());
    assert_eq!(c["aud"], "medmesh-api");
    assert_eq!(c["scope"], "medmesh.api role:auditor");
    assert_eq!(c["medmesh_roles"], serde_json::json!(["auditor"]));
    let (iat, exp) = (c["iat"].as_u64().expect("iat"), c["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, 600);

    let c = jwt_claims(&idp.machine_token(None, API_SCOPE, Some(API_RESOURCE)));
    assert_eq!(
        c["medmesh_roles"],
        serde_json::json!(["site-admin"]),
        "the default role"
    );
    assert_eq!(c["aud"], "medmesh-api");
    let c = jwt_claims(&idp.machine_token(None, API_SCOPE, Some(OTHER_RESOURCE)));
    assert_eq!(c["aud"], OTHER_RESOURCE);
    let c = jwt_claims(&idp.machine_token(Some("auditor"), "", None));
    assert_eq!(c["scope"], "role:auditor", "no API scope");
    let c = jwt_claims(&idp.machine_token(None, "medmesh.api ttl:1", None));
    assert_eq!(c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"), 1);

    let r = idp.token_request(
        &idp.options().machine_client_id,
        "wrong",
        &[("grant_type", "client_credentials")],
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // Another issuer: its own keys.
    let other = Idp::start(IdpOptions::default());
    let t = other.machine_token(None, API_SCOPE, None);
    assert_eq!(jwt_claims(&t)["iss"], other.issuer());
    assert_ne!(jwt_header(&t)["kid"], header["kid"]);
}

/// The authorization URL in a browser (asking for an access token to the API too), a
/// login, the code at the redirect URI, exchanged: the token response.
fn browser_login(idp: &Idp, browser: &Browser, catcher: &Catcher, login: &str, with_otp: bool) -> serde_json::Value {
    let redirect = catcher.url("/cb");
    let pkce = Pkce::new();
    let state = format!("state-{login}");
    let url = idp.authorization_url(&redirect, "openid profile medmesh.api", &state, "nonce-1", &pkce);
    browser.goto(&format!("{url}&{}", form_encode(&[("resource", API_RESOURCE)])));
    Idp::log_in(browser, login, with_otp);
    let target = catcher
        .next(Duration::from_secs(15))
        .expect("the redirect reached the test's listener");
    let (path, query) = target.split_once('?').expect("a query");
    assert_eq!(path, "/cb");
    let q = query_pairs(query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("state").as_deref(), Some(state.as_str()));
    assert_eq!(get("iss").as_deref(), Some(idp.issuer()));
    let code = get("code").expect("code");
    idp.exchange_code(&code, &redirect, &pkce)
}

#[test]
fn browser_logs_in_at_the_idp_with_and_without_the_second_factor() {
    let catcher = Catcher::start();
    let idp = Idp::start(IdpOptions {
        redirect_uris: vec![catcher.url("/cb")],
        post_logout_redirect_uris: vec![catcher.url("/bye")],
        ..IdpOptions::default()
    });
    let browser = Browser::start();

    // A wrong password: the form again, with the error.
    let pkce = Pkce::new();
    browser.goto(&idp.authorization_url(&catcher.url("/cb"), "openid", "s0", "n0", &pkce));
    assert!(browser.title().contains("Sign in"), "{}", browser.title());
    assert_eq!(browser.count("label[for=otp]"), 1);
    browser.fill("#login", "steward");
    browser.fill("#password", "wrong");
    browser.press("#password", "Enter");
    browser.wait_for("#error");
    assert_eq!(browser.text("#error"), "Wrong login or password.");
    assert!(browser.html("form").contains("name=\"otp\""));
    // A wrong code: refused too.
    browser.fill("#password", &password("steward"));
    browser.fill("#otp", "abcdef");
    browser.click("#submit");
    browser.wait_for("#error");
    assert_eq!(browser.text("#error"), "Wrong one-time code.");

    let shots = tempfile::tempdir().expect("tempdir");
    let shot = shots.path().join("login.png");
    browser.screenshot(&shot, true);
    assert!(std::fs::read(&shot).expect("screenshot").starts_with(b"\x89PNG"));

    let tokens = browser_login(&idp, &browser, &catcher, "steward", true);
    let c = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
    let steward = USERS.iter().find(|u| u.login == "steward").expect("steward");
    assert_eq!(c["sub"], subject_of("steward"));
    assert_eq!(c["amr"], serde_json::json!(["pwd", "otp"]));
    assert_eq!(c["acr"], ACR_MFA);
    assert_eq!(c["medmesh_roles"], serde_json::json!(steward.roles));
    assert_eq!(c["name"], steward.name);
    assert_eq!(c["nonce"], "nonce-1");
    // The user's access token for the API: a JWT with the roles claim.
    let at = jwt_claims(tokens["access_token"].as_str().expect("access_token"));
    assert_eq!(
        (&at["aud"], &at["scope"], &at["sub"]),
        (&"medmesh-api".into(), &API_SCOPE.into(), &c["sub"])
    );
    assert_eq!(at["medmesh_roles"], serde_json::json!(steward.roles));
    assert!(browser.url().starts_with(&catcher.url("/cb?")), "{}", browser.url());
    assert_eq!(browser.text("#rp"), "received");
    let cookies = browser.cookies();
    assert!(
        cookies.iter().any(|c| c["name"] == "_session"),
        "the IdP's session cookie: {cookies:?}"
    );
    assert_eq!(
        browser.evaluate("document.getElementById('rp').textContent"),
        "received"
    );

    // Without the IdP's session cookie the browser is asked to log in again.
    browser.clear_cookies();
    assert!(browser.cookies().is_empty());
    let tokens = browser_login(&idp, &browser, &catcher, "nomfa", false);
    let c = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(c["amr"], serde_json::json!(["pwd"]));
    assert_eq!(c["acr"], ACR_PWD);
    assert_eq!(c["medmesh_roles"], serde_json::json!(["clinician"]));

    // RP-initiated logout goes back to the post-logout URI with no confirmation to click.
    let cookies = browser.cookies();
    browser.goto(&format!(
        "{}/session/end?{}",
        idp.issuer(),
        form_encode(&[
            ("client_id", "medmesh-console"),
            ("post_logout_redirect_uri", &catcher.url("/bye"))
        ])
    ));
    browser.wait_url("/bye");
    assert_eq!(catcher.next(Duration::from_secs(10)).as_deref(), Some("/bye"));
    browser.set_cookies(&cookies);
    assert!(!browser.cookies().is_empty());
    assert!(browser.content().contains("received"));
    assert!(browser.console().iter().all(|m| !m.starts_with("pageerror")));
}
