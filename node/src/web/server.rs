//! The HTTPS listener (rustls) and its routes (axum): the console's pages
//! and forms, login and logout, and `/api/v1`, which serves the admin API's
//! route table ([`crate::api::routes::TABLE`]) to people and machine
//! clients whose roles allow each route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawForm, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::oidc::{OidcError, Provider};
use super::session::{self, LOGIN_COOKIE, Lookup, SESSION_COOKIE, Session, Sessions};
use super::{WebError, bearer, console};
use crate::access::Operation;
use crate::api::route::{Caller, Ctx, Person, WebAccess};
use crate::api::routes;

/// What the handlers share.
pub struct App {
    pub(super) ctx: Ctx,
    pub(super) provider: Provider,
    pub(super) sessions: Sessions,
    /// `https://host:port` of the console, from `redirect_url`.
    pub(super) origin: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<App>;

/// The routes of the listener.
pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(console::dashboard))
        .route("/studies", get(console::studies))
        .route("/transfers", get(console::transfers))
        .route("/approvals", get(console::approvals))
        .route("/consents", get(console::consents))
        .route("/notifications", get(console::notifications))
        .route("/ledger", get(console::ledger))
        .route("/trust", get(console::trust))
        .route("/act", post(console::act))
        .route("/assets/console.css", get(console::css))
        .route("/assets/console.js", get(console::js))
        .route("/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/logged-out", get(console::logged_out))
        .route("/api/v1/{*rest}", get(api).post(api))
        .fallback(|| async { console::message_page(StatusCode::NOT_FOUND, "Not found", "There is no such page.") })
        .with_state(app)
}

/// Headers every answer carries: no caching of pages with patient data, no
/// framing, a strict content security policy (the console loads its own
/// assets only).
fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

/// Serves `app` on `listener` over TLS until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let routes = router(app);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, cause = %e, "web: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let routes = routes.clone();
                            async move {
                                let req = req.map(Body::new);
                                let r = tower::ServiceExt::oneshot(routes, req).await;
                                Ok::<_, std::convert::Infallible>(match r {
                                    Ok(r) => secure_headers(r),
                                    Err(e) => match e {},
                                })
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(TokioIo::new(tls), service);
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, cause = %e, "web connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "web: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
}

/// Binds the listener of `addr`.
///
/// # Errors
/// [`WebError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, WebError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })
}

/// Every `Cookie` header of a request, as one.
fn cookie_header(headers: &HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The session of the request's cookie.
pub(super) fn session_of(app: &App, headers: &HeaderMap) -> Result<(String, Session), Lookup> {
    let cookies = cookie_header(headers);
    let token = session::cookie(&cookies, SESSION_COOKIE)
        .ok_or(Lookup::None)?
        .to_owned();
    let s = app.sessions.get(&token)?;
    Ok((token, s))
}

/// A person of a verified login or token.
pub(super) fn person(
    app: &App,
    issuer: &str,
    subject: &str,
    roles: Vec<crate::access::SiteRole>,
    via: &'static str,
) -> Person {
    Person {
        user: app.ctx.node().store().user_ref(issuer, subject),
        roles,
        via,
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `/api/v1/...`: a bearer token, or a session (with its CSRF token in
/// `X-CSRF-Token` on a POST); the route's access checked against the
/// caller's roles; then the route served as on the admin socket.
async fn api(
    State(app): State<Shared>,
    Path(rest): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate_api(&app, &method, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let path = format!("/v1/{rest}");
    match dispatch(&app, caller, &method, &path, body).await {
        Ok(r) | Err(r) => r,
    }
}

/// Serves route `path` to `person` (whose roles are checked here).
pub(super) async fn dispatch(
    app: &App,
    person: Person,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Result<Response, Response> {
    let verb = match *method {
        Method::GET => crate::api::route::Verb::Get,
        Method::POST => crate::api::route::Verb::Post,
        _ => return Err(json_error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST")),
    };
    let Some(entry) = routes::find(verb, path) else {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            &format!("no route {method} /api{path}"),
        ));
    };
    if entry.web == WebAccess::Socket {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            &format!("{path} is served on the node's admin socket only (it names files of the node's host)"),
        ));
    }
    if !person.may_call(entry.web) {
        let roles: Vec<&str> = person.roles.iter().map(|r| r.as_str()).collect();
        let needs: Vec<&str> = match entry.web {
            WebAccess::AnyOf(ops) => ops.iter().map(|o| o.as_str()).collect(),
            WebAccess::Socket => Vec::new(),
        };
        return Err(json_error(
            StatusCode::FORBIDDEN,
            &format!(
                "forbidden: your roles ({}) do not allow {} (it needs {})",
                roles.join(", "),
                path,
                needs.join(" or ")
            ),
        ));
    }
    let r = (entry.serve)(app.ctx.clone(), Caller::Person(person), body).await;
    Ok(r.map(Body::new))
}

async fn authenticate_api(app: &App, method: &Method, headers: &HeaderMap) -> Result<Person, Response> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
            .ok_or_else(|| bearer_refusal(&bearer::BearerError::Malformed))?;
        let now = chrono::Utc::now().timestamp();
        return match bearer::check(&app.provider, token.trim(), now).await {
            Ok(b) => Ok(person(app, app.provider.issuer(), &b.subject, b.roles, "api")),
            Err(e) => Err(bearer_refusal(&e)),
        };
    }
    match session_of(app, headers) {
        Ok((_, s)) => {
            if *method != Method::GET {
                let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
                if !session::csrf_ok(&s, given) {
                    return Err(json_error(
                        StatusCode::FORBIDDEN,
                        "the CSRF token (X-CSRF-Token) is missing or wrong: reload the console page",
                    ));
                }
            }
            Ok(s.person)
        }
        Err(lookup) => {
            let why = match lookup {
                Lookup::None => "authentication required: a bearer token, or a console session",
                Lookup::Idle => "the session ended after a time unused: log in again",
                Lookup::Expired => "the session reached its end: log in again",
            };
            let mut r = json_error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"medmesh\""),
            );
            Err(r)
        }
    }
}

fn bearer_refusal(e: &bearer::BearerError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = json_error(status, &e.to_string());
    let description = e.to_string().replace('"', "'");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"medmesh\", error=\"{}\", error_description=\"{description}\"",
        e.code()
    )) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    return_to: Option<String>,
}

/// Only console paths are returned to (no open redirect).
pub(super) fn local_path(p: Option<&str>) -> String {
    match p {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `/login`: to the provider, with PKCE, a state and a nonce.
async fn login(State(app): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    let return_to = local_path(q.return_to.as_deref());
    let (url, pending) = match app.provider.begin(return_to).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(cause = %e, "web: login cannot begin");
            return console::message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Login unavailable",
                &format!("The identity provider cannot be reached now: {e}"),
            );
        }
    };
    let Ok(binding) = session::token() else {
        return console::message_page(StatusCode::INTERNAL_SERVER_ERROR, "Login unavailable", "No randomness.");
    };
    app.sessions.begin(&binding, pending);
    let mut r = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, Some(&binding))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `/auth/callback`: the code exchanged, the ID token checked (MFA, role),
/// a session opened.
async fn callback(State(app): State<Shared>, Query(q): Query<CallbackQuery>, headers: HeaderMap) -> Response {
    let cookies = cookie_header(&headers);
    let refused = |why: &str| console::message_page(StatusCode::FORBIDDEN, "Login refused", why);
    let Some(pending) = session::cookie(&cookies, LOGIN_COOKIE).and_then(|b| app.sessions.take_pending(b)) else {
        return refused("This login was not started here, or took too long: start again from the console.");
    };
    if let Some(e) = q.error {
        return refused(&format!(
            "The identity provider refused: {e} {}",
            q.error_description.unwrap_or_default()
        ));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refused("The identity provider's answer has no code.");
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        state.as_bytes(),
        pending.state.as_bytes(),
    )) {
        return refused("The login's state does not match: start again from the console.");
    }
    let return_to = pending.return_to.clone();
    let login = match app.provider.finish(pending, code).await {
        Ok(l) => l,
        Err(e) => {
            tracing::info!(cause = %e, "web: login refused");
            let status = match e {
                OidcError::NoMfa { .. } | OidcError::NoRole { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            return console::message_page(status, "Login refused", &e.to_string());
        }
    };
    let p = person(&app, &login.issuer, &login.subject, login.roles.clone(), "console");
    tracing::info!(user = %p.user, roles = ?p.roles, "web: login");
    let Ok(token) = app.sessions.open(p, login.name.clone(), login.id_token.clone()) else {
        return console::message_page(StatusCode::INTERNAL_SERVER_ERROR, "Login failed", "No randomness.");
    };
    let mut r = Redirect::to(&return_to).into_response();
    for c in [
        session::set_cookie(SESSION_COOKIE, Some(&token)),
        session::set_cookie(LOGIN_COOKIE, None),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `/logout` (POST with the CSRF token): the session ended here and at the
/// provider (RP-initiated logout), back to `/logged-out`.
async fn logout(State(app): State<Shared>, headers: HeaderMap, RawForm(form): RawForm) -> Response {
    let fields = console::form_fields(&form);
    let Ok((token, s)) = session_of(&app, &headers) else {
        return Redirect::to("/logged-out").into_response();
    };
    if !session::csrf_ok(&s, fields.get("csrf").map_or("", String::as_str)) {
        return console::message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        );
    }
    app.sessions.close(&token);
    let after = format!("{}/logged-out", app.origin);
    let to = app.provider.logout_url(&s.id_token, &after).await.unwrap_or(after);
    let mut r = Redirect::to(&to).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(SESSION_COOKIE, None)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Calls route `path` for `person` and reads its JSON answer (the console's
/// pages use the API's routes, so each operation has one implementation and
/// one permission check).
pub(super) async fn call_json(
    app: &App,
    person: &Person,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let bytes = if method == Method::GET {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    };
    let r = match dispatch(app, person.clone(), &method, path, bytes).await {
        Ok(r) | Err(r) => r,
    };
    let status = r.status();
    let body = r.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        let msg = value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the request failed")
            .to_owned();
        Err((status, msg))
    }
}

/// Whether `person` may perform `op` (for what a page shows).
pub(super) fn may(person: &Person, op: Operation) -> bool {
    person.may(op)
}
