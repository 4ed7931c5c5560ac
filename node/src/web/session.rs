//! Console sessions, held in the node's memory (a restart logs everyone
//! out): a random token in a `__Host-` cookie (Secure, HttpOnly,
//! SameSite=Lax, Path=/), looked up by its BLAKE3 hash; an idle and an
//! absolute timeout; a per-session CSRF token every state-changing request
//! must carry; and the logins begun but not finished, bound to the browser
//! by a cookie of their own. Both maps are bounded: the oldest entries go
//! first when a flood of anonymous visits fills them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::oidc::Pending;
use crate::api::route::Person;

/// The session cookie's name (`__Host-`: Secure, no Domain, Path=/).
pub const SESSION_COOKIE: &str = "__Host-medmesh";
/// The cookie binding a login in progress to its browser.
pub const LOGIN_COOKIE: &str = "__Host-medmesh-login";
/// Sessions held at most.
pub const MAX_SESSIONS: usize = 10_000;
/// Logins in progress held at most.
pub const MAX_PENDING: usize = 10_000;
/// How long a login may take at the provider.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// A logged-in person's session.
#[derive(Clone)]
pub struct Session {
    /// Who, with their roles.
    pub person: Person,
    /// Their display name, if the provider gave one (shown in the console only).
    pub name: Option<String>,
    /// The CSRF token of their forms.
    pub csrf: String,
    /// The ID token, the logout hint.
    pub id_token: Zeroizing<String>,
    created: Instant,
    last: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("person", &self.person)
            .finish_non_exhaustive()
    }
}

/// Why a session cookie was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No cookie, or one this node does not know.
    None,
    /// It was unused for longer than the idle timeout.
    Idle,
    /// It is older than the absolute timeout.
    Expired,
}

/// The session and login stores.
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    pending: Mutex<HashMap<[u8; 32], Pending>>,
    idle: Duration,
    max: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// A fresh random token (32 bytes, hex).
///
/// # Errors
/// No randomness from the OS.
pub fn token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(hex::encode(b))
}

fn key(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    /// Stores with the idle and absolute timeouts.
    #[must_use]
    pub fn new(idle: Duration, max: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            idle,
            max,
        }
    }

    /// Keeps a login in progress under the browser's login cookie value.
    pub fn begin(&self, cookie: &str, pending: Pending) {
        let mut p = lock(&self.pending);
        p.retain(|_, v| v.started.elapsed() < LOGIN_TTL);
        if p.len() >= MAX_PENDING
            && let Some(oldest) = p.iter().min_by_key(|(_, v)| v.started).map(|(k, _)| *k)
        {
            p.remove(&oldest);
        }
        p.insert(key(cookie), pending);
    }

    /// Takes the login in progress of this browser, if it has one, not too old.
    pub fn take_pending(&self, cookie: &str) -> Option<Pending> {
        lock(&self.pending)
            .remove(&key(cookie))
            .filter(|p| p.started.elapsed() < LOGIN_TTL)
    }

    /// Opens a session; returns its cookie value.
    ///
    /// # Errors
    /// No randomness.
    pub fn open(
        &self,
        person: Person,
        name: Option<String>,
        id_token: Zeroizing<String>,
    ) -> Result<String, getrandom::Error> {
        let t = token()?;
        let now = Instant::now();
        let s = Session {
            person,
            name,
            csrf: token()?,
            id_token,
            created: now,
            last: now,
        };
        let mut m = lock(&self.sessions);
        let (idle, max) = (self.idle, self.max);
        m.retain(|_, v| v.last.elapsed() < idle && v.created.elapsed() < max);
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(key(&t), s);
        Ok(t)
    }

    /// The session of a cookie value, touched (its idle time restarts);
    /// an expired one is removed and said so.
    pub fn get(&self, cookie: &str) -> Result<Session, Lookup> {
        let mut m = lock(&self.sessions);
        let k = key(cookie);
        let Some(s) = m.get_mut(&k) else {
            return Err(Lookup::None);
        };
        if s.created.elapsed() >= self.max {
            m.remove(&k);
            return Err(Lookup::Expired);
        }
        if s.last.elapsed() >= self.idle {
            m.remove(&k);
            return Err(Lookup::Idle);
        }
        s.last = Instant::now();
        Ok(s.clone())
    }

    /// Ends a session; returns it.
    pub fn close(&self, cookie: &str) -> Option<Session> {
        lock(&self.sessions).remove(&key(cookie))
    }

    /// Sessions open now.
    #[must_use]
    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// Whether `given` is the session's CSRF token (constant time).
#[must_use]
pub fn csrf_ok(session: &Session, given: &str) -> bool {
    !given.is_empty() && bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
}

/// A `Set-Cookie` value for `name` = `value` (`None`: delete it).
#[must_use]
pub fn set_cookie(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}; Path=/; Secure; HttpOnly; SameSite=Lax"),
        None => format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"),
    }
}

/// The value of cookie `name` in a `Cookie` header.
#[must_use]
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::access::SiteRole;

    fn person() -> Person {
        Person {
            user: "00".repeat(16),
            roles: vec![SiteRole::Auditor],
            via: "console",
        }
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_end() {
        let s = Sessions::new(Duration::from_millis(80), Duration::from_secs(60));
        let t = s.open(person(), None, Zeroizing::new(String::new())).unwrap();
        assert!(s.get(&t).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(s.get(&t).err(), Some(Lookup::Idle));
        assert_eq!(s.get(&t).err(), Some(Lookup::None), "removed");

        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(80));
        let t = s.open(person(), None, Zeroizing::new(String::new())).unwrap();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(s.get(&t).is_ok(), "use keeps it alive until its end");
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.get(&t).err(), Some(Lookup::Expired));
    }

    #[test]
    fn csrf_and_logout() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let t = s.open(person(), None, Zeroizing::new(String::new())).unwrap();
        let session = s.get(&t).unwrap();
        assert!(csrf_ok(&session, &session.csrf.clone()));
        assert!(!csrf_ok(&session, ""));
        assert!(!csrf_ok(&session, &"0".repeat(64)));
        assert!(s.close(&t).is_some());
        assert_eq!(s.get(&t).err(), Some(Lookup::None));
        assert_eq!(s.get("not-a-token").err(), Some(Lookup::None));
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie("a=1; __Host-medmesh=xyz; b=2", SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", SESSION_COOKIE), None);
        let c = set_cookie(SESSION_COOKIE, Some("v"));
        for part in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(set_cookie(SESSION_COOKIE, None).contains("Max-Age=0"));
    }
}
