//! The web console and API of a running node, with the real parts a site
//! has: a real OpenID provider (tests/web/idp.mjs) and headless Chromium
//! (tests/web/browser.mjs). Two `medmesh run` nodes in two jurisdictions;
//! the holder's console on 127.0.0.1 over HTTPS with a certificate of a
//! test CA.
//!
//! In the browser: a login without the second factor is refused with a page
//! that says why; each role sees and may do only what the permission table
//! grants (a researcher has no approvals); a data steward approves a pending
//! cross-border request in the console and the transfer completes, and the
//! ledger names the steward by a keyed reference and role; a forged CSRF
//! token is refused; logout ends the session here and at the provider; a
//! session unused past its idle time is ended. Through the API: bearer
//! tokens of another audience, expired, from another issuer, and without
//! the scope are refused with 401/403 and the reason; a clinician cannot
//! re-link a pseudonym; routes naming host files are socket-only.
//!
//! With `MEDMESH_SCREENSHOTS=DIR`, the main pages are saved as PNG there
//! (docs/screenshots holds the committed ones).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medmesh_testnet::process::run;
use serde_json::Value;

use crate::browser::Browser;
use crate::idp::{API_RESOURCE, API_SCOPE, Idp, IdpOptions, OTHER_RESOURCE};
use crate::transfer::{consent, import_study, network, request, s, wait_state};
use crate::util::*;

/// A CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medmesh web test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    let paths = (dir.join("ca.pem"), dir.join("web.crt"), dir.join("web.key"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    (paths.0, paths.1, paths.2)
}

/// A port free now on 127.0.0.1 (the provider must know the console's
/// callback URL before the node starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An HTTPS answer: status, `WWW-Authenticate`, body.
struct Answer {
    status: u16,
    www_authenticate: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTPS/1.1 exchange with the console, trusting only the test CA.
fn https(ca: &Path, port: u16, method: &str, path: &str, bearer: Option<&str>, body: &str) -> Answer {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tls.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        www_authenticate: header("www-authenticate"),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The holder's config with the console on `port`, logging in at `idp`.
fn console_config(text: &str, port: u16, dir: &Path, idp: &Idp, idle_secs: u32) -> String {
    let (_, cert, key) = (dir.join("ca.pem"), dir.join("web.crt"), dir.join("web.key"));
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, &idp.options().client_secret).expect("secret");
    let text = text
        .replace(
            "approval_required = [\"research\", \"teaching\"]",
            "approval_required = [\"treatment\"]",
        )
        .replace(
            "[web]\n",
            &format!(
                "[web]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                s(&cert),
                s(&key)
            ),
        )
        .replace("session_idle_secs = 1800", &format!("session_idle_secs = {idle_secs}"))
        .replace("claim = \"roles\"", "claim = \"medmesh_roles\"");
    format!(
        "{text}\n[web.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\nredirect_url = \"https://127.0.0.1:{port}/auth/callback\"\n",
        idp.issuer(),
        idp.options().client_id,
        s(&secret)
    )
}

fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("MEDMESH_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        browser.screenshot(&dir.join(format!("{name}.png")), true);
    }
}

/// Logs `login` in at the console (through the provider) and lands on `path`.
fn log_in(browser: &Browser, port: u16, path: &str, login: &str, mfa: bool) {
    browser.goto(&format!("https://127.0.0.1:{port}{path}"));
    Idp::log_in(browser, login, mfa);
    browser.wait_for("h1");
}

#[test]
fn console_login_roles_approval_csrf_logout_and_api_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (ca, _, _) = certificates(dir.path());
    let idp = Idp::start(IdpOptions {
        redirect_uris: vec![format!("https://127.0.0.1:{port}/auth/callback")],
        post_logout_redirect_uris: vec![format!("https://127.0.0.1:{port}/logged-out")],
        ..IdpOptions::default()
    });
    let mut net = network(dir.path(), |t| console_config(t, port, dir.path(), &idp, 15));
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let out = run(&holder, &["status", "--json"]).expect("run");
    let status = json_lines(&out.stdout).remove(0).1;
    assert_eq!(
        status["web"],
        format!("127.0.0.1:{port}"),
        "status names the console: {status}"
    );

    // A cross-border request (FR asks DE) for treatment waits for a person.
    let study = import_study(&holder, dir.path(), 31, 4, 64);
    consent(&holder, &study, &recipient_peer, &[]);
    let (_, pending) = request(&recipient, &holder_peer, &study.uid, false);
    assert_eq!(pending["state"], "pending", "{pending}");
    let id = pending["id"].as_str().expect("id").to_string();

    // An anonymous visit goes to the provider; a login without MFA is refused, saying why.
    let browser = Browser::start();
    log_in(&browser, port, "/approvals", "nomfa", false);
    assert!(
        browser.url().contains(&format!("127.0.0.1:{port}/auth/callback")),
        "{}",
        browser.url()
    );
    assert_eq!(browser.text("h1"), "Login refused");
    let why = browser.text("#message");
    assert!(why.contains("second factor"), "{why}");
    screenshot(&browser, "login-refused-without-mfa");
    drop(browser);

    // A researcher (with MFA) gets no approvals: not in the menu, refused at the page and the API.
    let browser = Browser::start();
    log_in(&browser, port, "/", "researcher", true);
    assert_eq!(browser.text("h1"), "Dashboard");
    assert!(browser.text("#who").contains("researcher"));
    assert_eq!(
        browser.count("nav a[href='/approvals']"),
        0,
        "no approvals in a researcher's menu"
    );
    assert_eq!(browser.count("nav a[href='/studies']"), 1);
    assert_eq!(browser.goto(&format!("https://127.0.0.1:{port}/approvals")), Some(403));
    assert!(browser.text("#message").contains("do not allow"));
    let csrf = browser.evaluate("document.querySelector('meta[name=csrf-token]').content");
    let csrf = csrf.as_str().expect("csrf").to_string();
    let approve = format!(
        "fetch('/api/v1/approvals/approve', {{method: 'POST', headers: {{'content-type': 'application/json', 'x-csrf-token': '{csrf}'}}, body: JSON.stringify({{id: '{id}'}})}}).then(async r => [r.status, await r.text()])"
    );
    let refused = browser.evaluate(&approve);
    assert_eq!(refused[0], 403, "a researcher cannot approve: {refused}");
    assert!(
        refused[1].as_str().unwrap_or("").contains("decide-approval"),
        "{refused}"
    );
    // The holder's own study is identifiable: a researcher's studies page lists none of it.
    browser.goto(&format!("https://127.0.0.1:{port}/studies"));
    assert_eq!(
        browser.count("#studies tbody tr"),
        0,
        "a researcher sees de-identified studies only"
    );
    assert!(
        browser.html("#purpose").contains("research"),
        "the request form offers research"
    );
    drop(browser);

    // The data steward approves in the console; the transfer completes at the requester.
    let browser = Browser::start();
    log_in(&browser, port, "/approvals", "steward", true);
    assert_eq!(browser.text("h1"), "Approvals");
    screenshot(&browser, "approvals");
    // A forged CSRF token is refused, and nothing is decided.
    let forged = browser.evaluate(&approve.replace(&csrf, "forged"));
    assert_eq!(forged[0], 403, "{forged}");
    assert!(forged[1].as_str().unwrap_or("").contains("CSRF"), "{forged}");
    let row = format!("tr[data-id='{id}']");
    assert_eq!(browser.count(&row), 1, "the pending request is listed");
    browser.evaluate(&format!(
        "document.querySelector(\"{row} form input[name=csrf]\").value = 'forged'"
    ));
    browser.click_nav(&format!("{row} button[name=approve]"));
    assert_eq!(browser.text("h1"), "Refused", "a form with a forged token is refused");
    assert_eq!(show_state(&holder, &id), "pending");
    browser.goto(&format!("https://127.0.0.1:{port}/approvals"));
    browser.click_nav(&format!("{row} button[name=approve]"));
    assert!(
        browser.text("#message").contains("Approved"),
        "{}",
        browser.text("#message")
    );
    wait_state(&recipient, &id, &["complete"], Duration::from_secs(90));
    wait_state(&holder, &id, &["complete"], Duration::from_secs(30));
    browser.goto(&format!("https://127.0.0.1:{port}/transfers"));
    assert!(browser.text(&format!("tr[data-id='{id}'] .state")).contains("complete"));
    screenshot(&browser, "transfers");
    browser.goto(&format!("https://127.0.0.1:{port}/"));
    screenshot(&browser, "dashboard");
    // The steward records a consent in the console; it is on record, and withdrawn again.
    browser.goto(&format!("https://127.0.0.1:{port}/consents"));
    browser.fill("#patient_id", "WEB-PATIENT-7");
    browser.fill("#issuer", "KLINIKUM");
    browser.fill("#purposes", "treatment, second-opinion");
    browser.fill("#recipient_institutions", "Testnet Hospital 2 (FR)");
    browser.click_nav("#consent-form button");
    let done = browser.text("#message");
    assert!(done.contains("recorded"), "{done}");
    let out = run(&holder, &["consent", "list", "--json"]).expect("run");
    let listed = json_lines(&out.stdout);
    assert_eq!(listed.len(), 2, "the CLI's and the console's: {listed:?}");
    screenshot(&browser, "consents");
    let (added, _) = ledger_events(&holder, "person-acted");
    assert!(
        added
            .iter()
            .any(|(_, e)| e["route"] == "/v1/consents/add" && e["role"] == "data-steward")
    );

    // The ledger names the steward by a keyed reference and the role, never the subject.
    let (acted, _) = ledger_events(&holder, "person-acted");
    let decided: Vec<&Value> = acted
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["route"] == "/v1/approvals/approve")
        .collect();
    assert_eq!(decided.len(), 1, "one decision: {acted:?}");
    assert!(
        !acted
            .iter()
            .any(|(_, e)| e["route"] == "/v1/approvals" || e["route"] == "/v1/transfers"),
        "polled listings are not in the ledger: {acted:?}"
    );
    let d = decided[0];
    assert_eq!(d["role"], "data-steward");
    assert_eq!(d["target"], id.as_str());
    assert_eq!(d["via"], "console");
    let user = d["user"].as_str().expect("user");
    assert_eq!(user.len(), 32);
    assert!(!user.contains(&crate::idp::subject_of("steward")));

    // Logout ends the session here and at the provider.
    browser.goto(&format!("https://127.0.0.1:{port}/"));
    browser.click_nav("#logout");
    browser.wait_url("/logged-out");
    assert_eq!(browser.text("h1"), "Logged out");
    browser.goto(&format!("https://127.0.0.1:{port}/approvals"));
    assert!(
        browser.url().starts_with(idp.issuer()),
        "after logout a console page asks the provider again: {}",
        browser.url()
    );
    drop(browser);

    // An auditor verifies the ledger in the console; unused past the idle time, the session ends.
    let browser = Browser::start();
    log_in(&browser, port, "/ledger", "auditor", true);
    browser.click_nav("#verify");
    assert!(
        browser.text("#verified").contains("verifies"),
        "{}",
        browser.text("#verified")
    );
    screenshot(&browser, "ledger");
    std::thread::sleep(Duration::from_secs(17));
    assert_eq!(browser.goto(&format!("https://127.0.0.1:{port}/ledger")), Some(401));
    assert_eq!(browser.text("h1"), "Session ended");
    drop(browser);

    // The site admin manages trust: the consortium is listed.
    let browser = Browser::start();
    log_in(&browser, port, "/trust", "admin", true);
    assert_eq!(browser.text("h1"), "Trust");
    assert_eq!(browser.count("#consortia li"), 1);
    assert_eq!(
        browser.count("nav a[href='/studies']"),
        0,
        "the site admin sees no studies"
    );
    screenshot(&browser, "trust");
    drop(browser);

    // Bearer tokens: refused for each fault with 401/403 and the reason.
    let call = |token: &str, method: &str, path: &str, body: &str| https(&ca, port, method, path, Some(token), body);
    let auditor = idp.machine_token(Some("auditor"), API_SCOPE, Some(API_RESOURCE));
    let ok = call(&auditor, "GET", "/api/v1/log/verify", "");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["ok"], true);
    let no = call(
        &auditor,
        "POST",
        "/api/v1/approvals/deny",
        "{\"id\":\"00\",\"reason\":\"x\"}",
    );
    assert_eq!(no.status, 403, "an auditor decides nothing: {}", no.body);
    let wrong_aud = idp.machine_token(Some("auditor"), API_SCOPE, Some(OTHER_RESOURCE));
    let r = call(&wrong_aud, "GET", "/api/v1/log/verify", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap_or("").contains("audience"),
        "{}",
        r.body
    );
    assert!(r.www_authenticate.contains("invalid_token"), "{}", r.www_authenticate);
    let no_scope = idp.machine_token(Some("auditor"), "", Some(API_RESOURCE));
    let r = call(&no_scope, "GET", "/api/v1/log/verify", "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("scope"), "{}", r.body);
    assert!(
        r.www_authenticate.contains("insufficient_scope"),
        "{}",
        r.www_authenticate
    );
    let other_idp = Idp::start(IdpOptions::default());
    let foreign = other_idp.machine_token(Some("auditor"), API_SCOPE, Some(API_RESOURCE));
    let r = call(&foreign, "GET", "/api/v1/log/verify", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap_or("").contains("issued by"),
        "{}",
        r.body
    );
    let short = idp.machine_token(Some("auditor"), &format!("{API_SCOPE} ttl:1"), Some(API_RESOURCE));
    std::thread::sleep(Duration::from_secs(5));
    let r = call(&short, "GET", "/api/v1/log/verify", "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap_or("").contains("expired"),
        "{}",
        r.body
    );
    let r = https(&ca, port, "GET", "/api/v1/log/verify", None, "");
    assert_eq!(r.status, 401, "no token, no session: {}", r.body);

    // A clinician cannot re-link a pseudonym; the privacy officer may (the pseudonym is unknown here).
    let relink = "{\"pseudonym\":\"PSEUDO-0000\"}";
    let clinician = idp.machine_token(Some("clinician"), API_SCOPE, Some(API_RESOURCE));
    let r = call(&clinician, "POST", "/api/v1/studies/relink", relink);
    assert_eq!(r.status, 403, "{}", r.body);
    let privacy = idp.machine_token(Some("privacy-officer"), API_SCOPE, Some(API_RESOURCE));
    let r = call(&privacy, "POST", "/api/v1/studies/relink", relink);
    assert_ne!(r.status, 403, "the privacy officer may re-link: {}", r.body);
    // Routes that name files of the node's host are served on the admin socket only.
    let admin = idp.machine_token(Some("site-admin"), API_SCOPE, Some(API_RESOURCE));
    let r = call(&admin, "POST", "/api/v1/studies/import", "{\"paths\":[\"/etc\"]}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("admin socket"), "{}", r.body);
    // Each API action is in the ledger too, with the token's role.
    let (acted, _) = ledger_events(&holder, "person-acted");
    assert!(
        acted
            .iter()
            .any(|(_, e)| e["operation"] == "verify-ledger" && e["via"] == "api" && e["role"] == "auditor"),
        "{acted:?}"
    );
    net.stop();
}

fn show_state(home: &Path, id: &str) -> String {
    crate::transfer::show(home, id)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
