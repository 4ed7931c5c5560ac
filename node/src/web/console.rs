//! The console's pages: plain HTML rendered here (maud escapes every
//! value), one stylesheet and one small script served from the binary, no
//! CDN. Each page reads its data through the API's routes
//! ([`super::server::call_json`]) with the person's roles, and each form
//! posts to `/act`, which turns it into the route's request; so the console
//! can show and do exactly what the API allows the person, no more.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, RawForm, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::{Value, json};

use super::server::{App, call_json, local_path, may, session_of};
use super::session::{Lookup, Session};
use crate::access::Operation;

type Shared = Arc<App>;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// `/assets/console.css`.
pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// `/assets/console.js`.
pub async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS).into_response()
}

fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// A page with a title and a message, for errors and refusals.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    html_response(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "medmesh: " (title) } link rel="stylesheet" href="/assets/console.css"; }
                body {
                    main {
                        h1 { (title) }
                        p #message role="alert" { (message) }
                        p { a href="/login" { "Log in" } " · " a href="/" { "Console" } }
                    }
                }
            }
        },
    )
}

/// `/logged-out`.
pub async fn logged_out() -> Response {
    message_page(
        StatusCode::OK,
        "Logged out",
        "You are logged out of medmesh and of the identity provider.",
    )
}

/// The nav entries and the operation that shows each.
const NAV: [(&str, &str, Option<Operation>); 8] = [
    ("/", "Dashboard", None),
    ("/studies", "Studies", Some(Operation::ViewDeidentified)),
    ("/transfers", "Transfers", Some(Operation::RequestStudy)),
    ("/approvals", "Approvals", Some(Operation::DecideApproval)),
    ("/consents", "Consents", Some(Operation::ManageConsents)),
    ("/notifications", "Notifications", Some(Operation::ReadNotifications)),
    ("/ledger", "Ledger", Some(Operation::ReadLedger)),
    ("/trust", "Trust", Some(Operation::ManageTrust)),
];

fn shows(s: &Session, href: &str, op: Option<Operation>) -> bool {
    match (href, op) {
        (_, None) => true,
        ("/transfers", _) => may(&s.person, Operation::RequestStudy) || may(&s.person, Operation::DecideApproval),
        ("/ledger", _) => may(&s.person, Operation::ReadLedger) || may(&s.person, Operation::VerifyLedger),
        (_, Some(op)) => may(&s.person, op),
    }
}

fn layout(s: &Session, title: &str, flash: &Flash, body: Markup) -> Markup {
    let roles: Vec<&str> = s.person.roles.iter().map(|r| r.as_str()).collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(s.csrf);
                title { "medmesh: " (title) }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        ul {
                            @for (href, label, op) in NAV {
                                @if shows(s, href, op) { li { a href=(href) { (label) } } }
                            }
                        }
                    }
                    div.who {
                        span #who data-roles=(roles.join(" ")) {
                            (s.name.clone().unwrap_or_else(|| "signed in".into())) " · " (roles.join(", "))
                        }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button #logout type="submit" { "Log out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    @if let Some(m) = &flash.done { p.done #message role="status" { (m) } }
                    @if let Some(m) = &flash.error { p.error #message role="alert" { (m) } }
                    (body)
                }
            }
        }
    }
}

/// The message of the last form, passed back in the query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Flash {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    verify: Option<String>,
}

/// The session of a page request, or where to send the browser.
fn page_session(app: &App, headers: &HeaderMap, path: &str) -> Result<Session, Box<Response>> {
    match session_of(app, headers) {
        Ok((_, s)) => Ok(s),
        Err(Lookup::None) => Err(Box::new(
            Redirect::to(&format!("/login?return_to={}", urlencode(path))).into_response(),
        )),
        Err(Lookup::Idle | Lookup::Expired) => Err(Box::new(message_page(
            StatusCode::UNAUTHORIZED,
            "Session ended",
            "Your session has ended. Log in again to go on.",
        ))),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn forbidden_page(s: &Session, title: &str) -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        layout(
            s,
            title,
            &Flash::default(),
            html! { p.error #message role="alert" { "Your roles do not allow this page." } },
        ),
    )
}

fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

async fn data(app: &App, s: &Session, method: Method, path: &str, body: Value) -> Result<Value, String> {
    call_json(app, &s.person, method, path, body).await.map_err(|(_, m)| m)
}

fn failed(m: &str) -> Markup {
    html! { p.error role="alert" { (m) } }
}

/// `/`: the node, its peers, alerts.
pub async fn dashboard(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let status = data(&app, &s, Method::GET, "/v1/status", Value::Null).await;
    let peers = data(&app, &s, Method::GET, "/v1/peers", Value::Null).await;
    let body = html! {
        section aria-labelledby="node-h" {
            h2 #node-h { "This node" }
            @match &status {
                Ok(st) => {
                    dl {
                        dt { "Peer id" } dd #peer-id { (text(&st["node"], "peer_id")) }
                        dt { "Institution" } dd { (text(&st["node"], "institution")) }
                        dt { "Jurisdiction" } dd { (text(&st["node"], "jurisdiction")) }
                        dt { "Trusted peers connected" } dd #connected { (text(&st["net"], "trusted_connected")) }
                        dt { "Running since" } dd { (text(&st["net"], "started")) }
                        @if let Some(w) = st.get("web").and_then(Value::as_str) { dt { "Console" } dd { "https://" (w) "/" } }
                    }
                }
                Err(e) => (failed(e)),
            }
        }
        section aria-labelledby="peers-h" {
            h2 #peers-h { "Peers" }
            @match &peers {
                Ok(p) => {
                    table {
                        thead { tr { th { "Peer" } th { "Institution" } th { "Connected" } th { "Trust" } } }
                        tbody {
                            @for peer in rows(&p["peers"]) {
                                tr {
                                    td { code { (text(&peer, "peer_id")) } }
                                    td { (text(&peer, "institution")) }
                                    td { (if peer["connected"] == true { "yes" } else { "no" }) }
                                    td { (text(&peer, "status")) }
                                }
                            }
                        }
                    }
                }
                Err(e) => (failed(e)),
            }
        }
        section aria-labelledby="alerts-h" {
            h2 #alerts-h { "Alerts" }
            @let ledger = status.as_ref().ok().and_then(|st| st.get("ledger_problem")).and_then(Value::as_str).map(str::to_owned);
            @let (refused, unanswered) = match &peers { Ok(p) => (rows(&p["refused"]), rows(&p["unanswered"])), Err(_) => (Vec::new(), Vec::new()) };
            @if ledger.is_none() && refused.is_empty() && unanswered.is_empty() {
                p #alerts { "None." }
            } @else {
                ul #alerts {
                    @if let Some(l) = &ledger { li.error { "Ledger: " (l) } }
                    @for r in &refused { li.error { "Refused peer " code { (text(r, "peer_id")) } ": " (text(r, "reason")) " (" (text(r, "count")) " times, last " (text(r, "time")) ")" } }
                    @for u in &unanswered { li { "No answer from " code { (text(u, "peer_id")) } ": " (text(u, "detail")) } }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(&s, "Dashboard", &flash, body))
}

/// `/studies`: list, search, show, request from a peer.
pub async fn studies(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/studies") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::ViewDeidentified) && !may(&s.person, Operation::RequestStudy) {
        return forbidden_page(&s, "Studies");
    }
    let list = if may(&s.person, Operation::ViewDeidentified) || may(&s.person, Operation::ViewStudy) {
        Some(data(&app, &s, Method::POST, "/v1/studies/list", json!({ "patient": null })).await)
    } else {
        None
    };
    let q = flash.q.clone().unwrap_or_default().to_lowercase();
    let detail = match &flash.uid {
        Some(uid) => Some(data(&app, &s, Method::POST, "/v1/studies/show", json!({ "study_uid": uid })).await),
        None => None,
    };
    let purposes: Vec<&str> = s
        .person
        .roles
        .iter()
        .flat_map(|r| crate::access::request_purposes(*r).iter().map(|p| p.as_str()))
        .collect();
    let body = html! {
        @if let Some(list) = &list {
            section aria-labelledby="list-h" {
                h2 #list-h { "Held here" }
                form method="get" action="/studies" role="search" {
                    label for="q" { "Search (description, modality, date)" }
                    input #q name="q" type="search" value=(flash.q.clone().unwrap_or_default());
                    button type="submit" { "Search" }
                }
                @match list {
                    Ok(l) => {
                        table #studies {
                            thead { tr { th { "Study" } th { "Date" } th { "Description" } th { "Modalities" } th { "Objects" } th { "Origin" } } }
                            tbody {
                                @for st in rows(l).into_iter().filter(|st| q.is_empty() || st.to_string().to_lowercase().contains(&q)) {
                                    tr {
                                        td { a href=(format!("/studies?uid={}", urlencode(&text(&st, "study_uid")))) { code { (text(&st, "study_uid")) } } }
                                        td { (text(&st, "study_date")) }
                                        td { (text(&st, "description")) }
                                        td { (st["modalities"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                        td { (text(&st, "instances")) }
                                        td { (text(&st, "origin")) }
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => (failed(e)),
                }
            }
        }
        @if let Some(d) = &detail {
            section aria-labelledby="detail-h" {
                h2 #detail-h { "Study" }
                @match d {
                    Ok(v) => { pre #study-detail { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
                    Err(e) => (failed(e)),
                }
            }
        }
        @if !purposes.is_empty() {
            section aria-labelledby="request-h" {
                h2 #request-h { "Request a study from a peer" }
                form method="post" action="/act" #request-form {
                    (csrf_field(&s))
                    input type="hidden" name="_route" value="/v1/transfers/request";
                    input type="hidden" name="_back" value="/transfers";
                    label for="peer_id" { "Peer id" } input #peer_id name="peer_id" required;
                    label for="study_uid" { "Study Instance UID" } input #study_uid name="study_uid" required;
                    label for="purpose" { "Purpose" }
                    select #purpose name="purpose" { @for p in &purposes { option value=(p) { (p) } } }
                    label for="level" { "Level (optional)" }
                    select #level name="level" {
                        option value="" { "weakest allowed" }
                        option value="identifiable" { "identifiable" }
                        option value="pseudonymised" { "pseudonymised" }
                        option value="anonymised" { "anonymised" }
                    }
                    button type="submit" { "Request" }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(&s, "Studies", &flash, body))
}

fn transfers_table(id: &str, list: &[Value], decide: Option<&Session>) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { "Transfer" } th { "Direction" } th { "Peer" } th { "Purpose" } th { "Role" } th { "State" } th { "Progress" }
                @if decide.is_some() { th { "Decision" } } } }
            tbody {
                @for t in list {
                    @let tid = text(t, "id");
                    @let (done, total) = (t["done_bytes"].as_u64().unwrap_or(0), t["bytes"].as_u64().unwrap_or(0));
                    tr data-id=(tid) {
                        td { code { (tid) } }
                        td { (text(t, "direction")) }
                        td { (text(t, "institution")) }
                        td { (text(t, "purpose")) }
                        td { (text(t, "role")) }
                        td.state { (text(t, "state")) }
                        td.progress { progress max=(total.max(1)) value=(done) {} " " (done) " / " (total) " bytes" }
                        @if let Some(s) = decide {
                            td {
                                form method="post" action="/act" {
                                    (csrf_field(s))
                                    input type="hidden" name="_route" value="/v1/approvals/approve";
                                    input type="hidden" name="_back" value="/approvals";
                                    input type="hidden" name="id" value=(tid);
                                    button type="submit" name="approve" { "Approve" }
                                }
                                form method="post" action="/act" {
                                    (csrf_field(s))
                                    input type="hidden" name="_route" value="/v1/approvals/deny";
                                    input type="hidden" name="_back" value="/approvals";
                                    input type="hidden" name="id" value=(tid);
                                    label for=(format!("reason-{tid}")) { "Reason" }
                                    input id=(format!("reason-{tid}")) name="reason" required;
                                    button type="submit" name="deny" { "Deny" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/transfers`: every transfer, progress updated live by the script.
pub async fn transfers(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/transfers") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::RequestStudy) && !may(&s.person, Operation::DecideApproval) {
        return forbidden_page(&s, "Transfers");
    }
    let list = data(&app, &s, Method::GET, "/v1/transfers", Value::Null).await;
    let body = match list {
        Ok(l) => html! { div data-live="/api/v1/transfers" { (transfers_table("transfers", &rows(&l), None)) } },
        Err(e) => failed(&e),
    };
    html_response(StatusCode::OK, layout(&s, "Transfers", &flash, body))
}

/// `/approvals`: requests waiting for a person, approve or deny with a reason.
pub async fn approvals(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/approvals") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::DecideApproval) {
        return forbidden_page(&s, "Approvals");
    }
    let body = match data(&app, &s, Method::GET, "/v1/approvals", Value::Null).await {
        Ok(l) if rows(&l).is_empty() => html! { p #empty { "No request is waiting." } },
        Ok(l) => transfers_table("approvals", &rows(&l), Some(&s)),
        Err(e) => failed(&e),
    };
    html_response(StatusCode::OK, layout(&s, "Approvals", &flash, body))
}

/// `/consents`: add, withdraw, import FHIR.
pub async fn consents(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/consents") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::ManageConsents) {
        return forbidden_page(&s, "Consents");
    }
    let list = data(&app, &s, Method::POST, "/v1/consents/list", json!({ "patient": null })).await;
    let body = html! {
        section aria-labelledby="list-h" {
            h2 #list-h { "On record" }
            @match &list {
                Ok(l) => {
                    table #consents {
                        thead { tr { th { "Consent" } th { "Purposes" } th { "Level" } th { "Until" } th { "State" } th { "Withdraw" } } }
                        tbody {
                            @for c in rows(l) {
                                @let id = text(&c, "id");
                                tr {
                                    td { code { (id) } }
                                    td { (c["record"]["scope"]["purposes"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                    td { (provision(&c["record"]["provision"])) }
                                    td { (text(&c["record"], "valid_until")) }
                                    td { (text(&c, "status")) }
                                    td {
                                        form method="post" action="/act" {
                                            (csrf_field(&s))
                                            input type="hidden" name="_route" value="/v1/consents/withdraw";
                                            input type="hidden" name="_back" value="/consents";
                                            input type="hidden" name="id" value=(id);
                                            button type="submit" { "Withdraw" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => (failed(e)),
            }
        }
        section aria-labelledby="add-h" {
            h2 #add-h { "Add a consent" }
            form method="post" action="/act" #consent-form {
                (csrf_field(&s))
                input type="hidden" name="_route" value="/v1/consents/add";
                input type="hidden" name="_back" value="/consents";
                label for="patient_id" { "Patient ID" } input #patient_id name="patient_id" required autocomplete="off";
                label for="issuer" { "Issuer of Patient ID" } input #issuer name="issuer";
                label for="by" { "Consented by" }
                select #by name="by" { option value="patient" { "patient" } option value="representative" { "representative" } }
                label for="purposes" { "Purposes (comma-separated)" } input #purposes name="purposes" value="treatment";
                label for="consent-level" { "Weakest level allowed" }
                select #consent-level name="level" {
                    option value="pseudonymised" { "pseudonymised" }
                    option value="anonymised" { "anonymised" }
                    option value="identifiable" { "identifiable" }
                }
                label for="recipient_institutions" { "Recipient institutions (comma-separated)" } input #recipient_institutions name="recipient_institutions";
                label for="until" { "Until (YYYY-MM-DD, optional)" } input #until name="until";
                button type="submit" { "Add" }
            }
        }
        section aria-labelledby="fhir-h" {
            h2 #fhir-h { "Import a FHIR Consent" }
            form method="post" action="/act" #fhir-form {
                (csrf_field(&s))
                input type="hidden" name="_route" value="/v1/consents/import-fhir";
                input type="hidden" name="_back" value="/consents";
                label for="fhir-issuer" { "Issuer of Patient ID" } input #fhir-issuer name="issuer";
                label for="resource" { "FHIR R4 Consent (JSON)" } textarea #resource name="resource" rows="8" {}
                button type="submit" { "Import" }
            }
        }
    };
    html_response(StatusCode::OK, layout(&s, "Consents", &flash, body))
}

/// A consent's provision in words: `permit (pseudonymised)`, `deny`.
fn provision(p: &Value) -> String {
    match p {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v.get("level").and_then(Value::as_str) {
                Some(level) => format!("{k} ({level})"),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// `/notifications`.
pub async fn notifications(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/notifications") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::ReadNotifications) {
        return forbidden_page(&s, "Notifications");
    }
    let body = match data(&app, &s, Method::POST, "/v1/notifications", json!({ "unread": false })).await {
        Ok(l) => html! {
            table #notifications {
                thead { tr { th { "When" } th { "What" } th { "Role" } th { "By" } th { "Study" } } }
                tbody {
                    @for n in rows(&l) {
                        tr { td { (text(&n, "time")) } td { (text(&n, "kind")) } td.role { (text(&n, "role")) } td { code { (text(&n, "author")) } } td { code { (text(&n, "study_uid")) } } }
                    }
                }
            }
        },
        Err(e) => failed(&e),
    };
    html_response(StatusCode::OK, layout(&s, "Notifications", &flash, body))
}

/// `/ledger`: the tail, and verification.
pub async fn ledger(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/ledger") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::ReadLedger) && !may(&s.person, Operation::VerifyLedger) {
        return forbidden_page(&s, "Ledger");
    }
    let verify = if flash.verify.is_some() && may(&s.person, Operation::VerifyLedger) {
        Some(data(&app, &s, Method::GET, "/v1/log/verify", Value::Null).await)
    } else {
        None
    };
    let tail = if may(&s.person, Operation::ReadLedger) {
        Some(data(&app, &s, Method::POST, "/v1/log/tail", json!({ "limit": 50 })).await)
    } else {
        None
    };
    let body = html! {
        @if may(&s.person, Operation::VerifyLedger) {
            form method="get" action="/ledger" {
                input type="hidden" name="verify" value="1";
                button #verify type="submit" { "Verify the ledger" }
            }
        }
        @if let Some(v) = &verify {
            @match v {
                Ok(r) => {
                    @if r["ok"].as_bool() == Some(true) { p.done #verified role="status" { "Every feed verifies: signatures and chains are intact." } }
                    @else { p.error #verified role="alert" { "Verification found problems:" } pre { (serde_json::to_string_pretty(r).unwrap_or_default()) } }
                }
                Err(e) => (failed(e)),
            }
        }
        @if let Some(t) = &tail {
            @match t {
                Ok(l) => {
                    table #ledger {
                        thead { tr { th { "Seq" } th { "When" } th { "What" } th { "Role" } th { "User" } th { "Author" } } }
                        tbody {
                            @for e in rows(l) {
                                tr {
                                    td { (text(&e, "seq")) }
                                    td { (text(&e, "time")) }
                                    td { (text(&e, "kind")) @if let Some(op) = e["event"].get("operation").and_then(Value::as_str) { ": " (op) } }
                                    td { (text(&e["event"], "role")) }
                                    td { code { (text(&e["event"], "user")) } }
                                    td { code { (text(&e, "author")) } }
                                }
                            }
                        }
                    }
                }
                Err(e) => (failed(e)),
            }
        }
    };
    html_response(StatusCode::OK, layout(&s, "Ledger", &flash, body))
}

/// `/trust`: peers, revocations, blocks.
pub async fn trust(State(app): State<Shared>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let s = match page_session(&app, &headers, "/trust") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !may(&s.person, Operation::ManageTrust) {
        return forbidden_page(&s, "Trust");
    }
    let body = match data(&app, &s, Method::GET, "/v1/trust", Value::Null).await {
        Ok(t) => html! {
            section aria-labelledby="cons-h" {
                h2 #cons-h { "Consortia" }
                ul #consortia { @for c in rows(&t["consortia"]) { li { (text(&c, "name")) " " code { (text(&c, "id")) } " · threshold " (text(&c, "threshold")) " of " (c["admins"].as_array().map_or(0, Vec::len)) " · expires " (text(&c, "expires")) } } }
            }
            section aria-labelledby="bil-h" {
                h2 #bil-h { "Peers trusted bilaterally" }
                ul { @for p in rows(&t["bilateral"]) { li { code { (text(&p, "peer_id")) } " " (text(&p, "institution")) } } }
            }
            section aria-labelledby="rev-h" {
                h2 #rev-h { "Revocations" }
                ul #revocations { @for r in rows(&t["revocations"]) { li { code { (text(&r, "target")) } " " (text(&r, "reason")) " (" (text(&r, "time")) ")" } } }
                form method="post" action="/act" {
                    (csrf_field(&s))
                    input type="hidden" name="_route" value="/v1/trust/apply";
                    input type="hidden" name="_back" value="/trust";
                    label for="revocation" { "Apply a revocation (hex)" } input #revocation name="revocation" required;
                    button type="submit" { "Apply" }
                }
            }
            section aria-labelledby="blk-h" {
                h2 #blk-h { "Blocked peers" }
                ul #blocked { @for b in rows(&t["blocked"]) { li { code { (text(&b, "peer_id")) } " " (text(&b, "reason")) " (since " (text(&b, "since")) ")" } } }
                form method="post" action="/act" {
                    (csrf_field(&s))
                    input type="hidden" name="_route" value="/v1/trust/block";
                    input type="hidden" name="_back" value="/trust";
                    label for="block-peer" { "Peer id" } input #block-peer name="peer_id" required;
                    label for="block-reason" { "Reason" } input #block-reason name="reason" required;
                    button type="submit" { "Block" }
                }
            }
        },
        Err(e) => failed(&e),
    };
    html_response(StatusCode::OK, layout(&s, "Trust", &flash, body))
}

/// The fields of an urlencoded form (the last value of a repeated name).
#[must_use]
pub fn form_fields(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn list(v: Option<&String>) -> Value {
    Value::Array(
        v.map(|s| {
            s.split([',', '\n'])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| Value::String(x.to_owned()))
                .collect()
        })
        .unwrap_or_default(),
    )
}

fn opt(v: Option<&String>) -> Value {
    match v.map(|s| s.trim()) {
        Some(s) if !s.is_empty() => Value::String(s.to_owned()),
        _ => Value::Null,
    }
}

/// The route request a console form stands for (only the routes the
/// console's forms post to).
fn form_request(route: &str, f: &BTreeMap<String, String>) -> Option<Value> {
    let s = |k: &str| Value::String(f.get(k).cloned().unwrap_or_default());
    Some(match route {
        "/v1/approvals/approve" | "/v1/consents/withdraw" => json!({ "id": s("id") }),
        "/v1/approvals/deny" => json!({ "id": s("id"), "reason": s("reason") }),
        "/v1/transfers/request" => json!({
            "peer_id": s("peer_id"), "study_uid": s("study_uid"), "purpose": s("purpose"), "level": opt(f.get("level")),
        }),
        "/v1/consents/add" => json!({
            "patient_id": s("patient_id"), "issuer": s("issuer"), "by": s("by"),
            "purposes": list(f.get("purposes")), "level": opt(f.get("level")),
            "recipient_institutions": list(f.get("recipient_institutions")),
            "until": opt(f.get("until")),
        }),
        "/v1/consents/import-fhir" => json!({ "files": [], "resources": [s("resource")], "issuer": s("issuer") }),
        "/v1/trust/apply" => json!({ "revocation": s("revocation") }),
        "/v1/trust/block" => json!({ "peer_id": s("peer_id"), "reason": s("reason") }),
        _ => return None,
    })
}

/// `/act`: a console form (CSRF-checked) turned into its route's request,
/// served, and back to the page with what happened.
pub async fn act(State(app): State<Shared>, headers: HeaderMap, RawForm(form): RawForm) -> Response {
    let s = match page_session(&app, &headers, "/") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let f = form_fields(&form);
    if !super::session::csrf_ok(&s, f.get("csrf").map_or("", String::as_str)) {
        return message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        );
    }
    let back = local_path(f.get("_back").map(String::as_str));
    let route = f.get("_route").cloned().unwrap_or_default();
    let Some(body) = form_request(&route, &f) else {
        return message_page(StatusCode::BAD_REQUEST, "Refused", "This form names no console action.");
    };
    let (key, message) = match call_json(&app, &s.person, Method::POST, &route, body).await {
        Ok(v) => ("done", done_message(&route, &v)),
        Err((_, m)) => ("error", m),
    };
    let sep = if back.contains('?') { '&' } else { '?' };
    let mut r = Redirect::to(&format!("{back}{sep}{key}={}", urlencode(&message))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn done_message(route: &str, v: &Value) -> String {
    match route {
        "/v1/approvals/approve" => format!("Approved transfer {}.", text(v, "id")),
        "/v1/approvals/deny" => format!("Denied transfer {}.", text(v, "id")),
        "/v1/transfers/request" => format!("Requested: transfer {} is {}.", text(v, "id"), text(v, "state")),
        "/v1/consents/add" => format!("Consent {} recorded.", text(v, "id")),
        "/v1/consents/withdraw" => format!("Consent {} withdrawn.", text(v, "id")),
        "/v1/consents/import-fhir" => format!("{} consent(s) imported.", v.as_array().map_or(0, Vec::len)),
        _ => "Done.".to_owned(),
    }
}
