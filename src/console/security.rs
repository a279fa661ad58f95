//! Who may use the console, and how a write proves it came from the console's own page
//! (docs/behaviour.md section 16): the Host allowlist (DNS rebinding), the token (a Bearer
//! header, or a session cookie the login form sets), the per-session CSRF token with a
//! same-origin check, and the headers every answer carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warp::http::{HeaderMap, HeaderValue, Response};

use crate::config::{AdminConfig, Secret};

/// The session cookie's name.
pub const COOKIE: &str = "freshet_console";
/// How long a session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept: the oldest go first (a client that never keeps cookies cannot
/// fill memory).
const MAX_SESSIONS: usize = 10_000;

/// The headers every answer carries.
pub const HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

pub fn add_headers<B>(response: &mut Response<B>) {
    for (name, value) in HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
}

/// Whether `host` (the `Host` header) names the console: a loopback name, or one of
/// `admin.hosts`, with or without a port.
pub fn host_allowed(admin: &AdminConfig, host: Option<&str>) -> bool {
    let Some(host) = host.map(str::to_lowercase) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1]:8788
        Some(rest) => rest.split(']').next().map(|inner| format!("[{inner}]")),
        None => host.split(':').next().map(String::from),
    };
    let Some(name) = name else {
        return false;
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
        || admin
            .hosts
            .iter()
            .any(|allowed| *allowed == host || *allowed == name)
}

/// Whether `authorization` is `Bearer <token>`.
pub fn bearer_matches(token: &Secret, authorization: Option<&str>) -> bool {
    authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| crate::ingest::signature::secrets_equal(given.trim(), token))
}

/// The session id in the request's cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|value| value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a session, answering a request with `headers`; `Secure`
/// when the browser reached the console over HTTPS (see [`over_https`]), so that it never
/// sends the cookie in the clear.
pub fn set_cookie(id: &str, headers: &HeaderMap) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if over_https(headers) { "; Secure" } else { "" }
    )
}

/// Whether the browser reached the console over HTTPS: the console itself speaks plain
/// HTTP, so only behind a reverse proxy that ends TLS, which says so in
/// `X-Forwarded-Proto`, or from a page whose `Origin` is `https://` (the login form's
/// POST). A forged header only marks the forger's own cookie `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-proto").is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
        || header("origin").is_some_and(|origin| origin.starts_with("https://"))
}

/// Whether a write comes from a page of this origin: its `Origin` names the same host
/// as its `Host`, or, without an `Origin`, its `Sec-Fetch-Site` says `same-origin`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host");
    match header("origin") {
        Some(origin) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            origin_host.is_some()
                && origin_host.map(str::to_lowercase) == host.map(str::to_lowercase)
        }
        None => header("sec-fetch-site") == Some("same-origin"),
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    /// Signed in with the token (always true when no token is configured: the session
    /// only carries the CSRF token then).
    pub signed_in: bool,
    created: Instant,
}

/// The console's sessions, in memory: a restart signs everyone out.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// The live session `id` names.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(session) if session.created.elapsed() < SESSION_LIFETIME => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new session; returns its id.
    pub fn create(&self, signed_in: bool) -> (String, Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        let id = random_hex();
        let session = Session {
            csrf: random_hex(),
            signed_in,
            created: Instant::now(),
        };
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(hosts: &[&str]) -> AdminConfig {
        AdminConfig {
            listen: "127.0.0.1:8788".parse().unwrap(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            token: None,
            read_only: false,
        }
    }

    #[test]
    fn only_loopback_names_and_listed_hosts_are_answered() {
        let admin = admin(&["freshet.internal"]);
        for host in [
            "localhost:8788",
            "127.0.0.1:8788",
            "[::1]:8788",
            "LOCALHOST",
            "freshet.internal",
            "freshet.internal:443",
        ] {
            assert!(host_allowed(&admin, Some(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8788",
            "127.0.0.1.evil.example",
            "[::2]:8788",
        ] {
            assert!(!host_allowed(&admin, Some(host)), "{host}");
        }
        assert!(!host_allowed(&admin, None));
    }

    #[test]
    fn writes_must_come_from_the_same_origin() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8788"),
            ("origin", "http://127.0.0.1:8788")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8788"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8788"),
            ("origin", "null")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8788"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8788"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8788")])));
    }
}
