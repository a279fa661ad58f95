//! What every action shares: the HTTP client, the classification of failures into
//! "try again" and "final" (docs/behaviour.md section 6), and the backoff between attempts.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::{Response, StatusCode};
use url::Url;

use crate::config::ActionsConfig;

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Connection errors, timeouts, 5xx and 429: worth another attempt.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Other 4xx answers, bad arguments, unconfigured services: final at once.
    #[error("{0}")]
    Final(String),
}

impl ActionError {
    pub fn retryable(message: impl Into<String>) -> ActionError {
        ActionError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn final_error(message: impl Into<String>) -> ActionError {
        ActionError::Final(message.into())
    }

    /// The final error of an action whose service has no config section (docs/behaviour.md section
    /// 3).
    pub fn not_configured(service: &str) -> ActionError {
        ActionError::Final(format!("{service} is not configured"))
    }
}

/// The one HTTP client for all services (connection pool, timeouts, user agent). Fails
/// only when the TLS setup does: the system's trust store holds no usable certificate.
pub fn build_client(config: &ActionsConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("freshet/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_millis(config.timeout_ms))
        .connect_timeout(Duration::from_millis(config.timeout_ms.min(10_000)))
        // Redirects are followed by hand where a service needs it (Tableau sign-in), so a
        // POST is never silently turned into a GET and credentials never follow a 3xx.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| format!("cannot set up the HTTP client (TLS trust store): {error}"))
}

/// A transport error, without the URL (a Slack webhook URL is a secret).
pub fn transport_error(service: &str, error: reqwest::Error) -> ActionError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ActionError::retryable(format!("{service}: {kind}: {}", error.without_url()))
}

/// Classifies a non-success answer: 429 and 5xx retry (honouring Retry-After), other
/// statuses are final. `detail` is a short, secret-free description of the body.
pub fn status_error(
    service: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: &str,
) -> ActionError {
    let message = if detail.is_empty() {
        format!("{service}: HTTP {}", status.as_u16())
    } else {
        format!("{service}: HTTP {}: {detail}", status.as_u16())
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        ActionError::Retryable {
            message,
            retry_after,
        }
    } else {
        ActionError::Final(message)
    }
}

/// Longest answer read from a service (docs/behaviour.md section 11): their answers are small JSON
/// documents, and a misbehaving server or proxy must not be able to fill our memory.
/// Mode's result rows are streamed separately, bounded by `mode.max_result_bytes`.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 3;

/// A service's answer, read in full (up to [`MAX_ANSWER_BYTES`]).
pub struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` header, when the service sent one in seconds.
    pub retry_after: Option<Duration>,
    pub body: String,
    /// Where the answer came from, after any redirect. May be a secret (a Slack webhook):
    /// never log it.
    pub url: Url,
}

impl Answer {
    /// The answer as an error: retryable for 429 and 5xx, else final.
    pub fn into_error(self, service: &str) -> ActionError {
        status_error(service, self.status, self.retry_after, &excerpt(&self.body))
    }
}

/// Sends a request and reads the whole answer (up to [`MAX_ANSWER_BYTES`]). Redirects are
/// followed only where credentials stay safe ([`safe_redirect`]); the request is sent
/// again as it was, method and body included, as tableauserverclient re-POSTs a sign-in
/// (`auth_endpoint.py`). Transport failures are retryable errors that never carry the URL.
pub async fn send(service: &str, request: reqwest::RequestBuilder) -> Result<Answer, ActionError> {
    Answer::read(service, send_following_redirects(service, request).await?).await
}

impl Answer {
    /// Reads `response` (up to [`MAX_ANSWER_BYTES`]).
    pub async fn read(service: &str, response: Response) -> Result<Answer, ActionError> {
        let status = response.status();
        let retry_after = retry_after(&response);
        let url = response.url().clone();
        let body = read_capped(service, response, MAX_ANSWER_BYTES).await?;
        Ok(Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
            url,
        })
    }
}

/// Sends `request`, following safe redirects; returns the first answer that is not one.
pub async fn send_following_redirects(
    service: &str,
    request: reqwest::RequestBuilder,
) -> Result<Response, ActionError> {
    let (client, request) = request.build_split();
    let mut request = request.map_err(|e| transport_error(service, e))?;
    for _ in 0..=MAX_REDIRECTS {
        let again = request.try_clone();
        let response = client
            .execute(request)
            .await
            .map_err(|e| transport_error(service, e))?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok());
        let (true, Some(location)) = (response.status().is_redirection(), location) else {
            return Ok(response);
        };
        let target = safe_redirect(response.url(), location)
            .map_err(|why| ActionError::final_error(format!("{service}: {why}")))?;
        let Some(mut next) = again else {
            return Err(ActionError::final_error(format!(
                "{service}: redirected, and the request cannot be sent again"
            )));
        };
        *next.url_mut() = target;
        request = next;
    }
    Err(ActionError::final_error(format!(
        "{service}: more than {MAX_REDIRECTS} redirects"
    )))
}

/// Where a redirect from `from` to `location` may be followed: a relative `Location`, the
/// same scheme, host and port, or the same host from http to https (docs/behaviour.md section 7).
/// Any other target would receive the credentials the request carries (a Tableau PAT or
/// token, a Mode key, a Slack token), so it is refused. The error names only the host.
pub fn safe_redirect(from: &Url, location: &str) -> Result<Url, String> {
    let target = from
        .join(location)
        .map_err(|_| "redirected to an unreadable Location".to_string())?;
    let same_host = target.host_str() == from.host_str();
    let same_origin = same_host
        && target.scheme() == from.scheme()
        && target.port_or_known_default() == from.port_or_known_default();
    let upgrade = same_host && from.scheme() == "http" && target.scheme() == "https";
    if same_origin || upgrade {
        return Ok(target);
    }
    if same_host && from.scheme() == "https" && target.scheme() == "http" {
        return Err("refused a redirect from https to plain http".into());
    }
    let server = match (target.host_str(), target.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (host, None) => host.unwrap_or("?").to_string(),
        (None, Some(_)) => "?".to_string(),
    };
    Err(format!(
        "refused a redirect to another server ({server}): credentials are only sent to the configured one"
    ))
}

/// Reads a body up to `cap` bytes. A longer one is an error of the attempt: retryable when
/// the status was a 5xx (the server is in trouble), final otherwise.
pub async fn read_capped(
    service: &str,
    mut response: Response,
    cap: usize,
) -> Result<Vec<u8>, ActionError> {
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(too_long(service, status, cap));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(service, e))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_long(service, status, cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_long(service: &str, status: StatusCode, cap: usize) -> ActionError {
    let message = format!(
        "{service}: HTTP {}: the answer is longer than {cap} bytes",
        status.as_u16()
    );
    if status.is_server_error() {
        ActionError::retryable(message)
    } else {
        ActionError::Final(message)
    }
}

/// The `Retry-After` header: delay-seconds, or an HTTP-date (RFC 9110 allows both; a
/// proxy in front of a service may send the date). Unreadable values are ignored.
pub fn retry_after(response: &Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(value, SystemTime::now())
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date already past means "now".
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// At most this much of a body goes into an error message.
const DETAIL_LIMIT: usize = 300;

/// A short, single-line excerpt of a body for error messages.
pub fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(DETAIL_LIMIT) {
        Some((index, _)) => format!("{}…", &flat[..index]),
        None => flat,
    }
}

/// Delay before attempt `attempt + 1`: exponential from `backoff_initial_ms`, capped at
/// `backoff_max_ms`, with ±10% jitter, and never shorter than the server's Retry-After.
pub fn backoff(config: &ActionsConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let base = config
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_max_ms);
    let jitter = rand::thread_rng().gen_range(0.9..=1.1);
    let delay = Duration::from_millis((base as f64 * jitter) as u64);
    match retry_after {
        Some(wait) => delay.max(wait),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ActionsConfig {
        ActionsConfig {
            max_attempts: 8,
            backoff_initial_ms: 1000,
            backoff_max_ms: 10_000,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let c = config();
        let first = backoff(&c, 1, None).as_millis();
        assert!((900..=1100).contains(&first), "{first}");
        let third = backoff(&c, 3, None).as_millis();
        assert!((3600..=4400).contains(&third), "{third}");
        let capped = backoff(&c, 20, None).as_millis();
        assert!((9000..=11000).contains(&capped), "{capped}");
        assert_eq!(
            backoff(&c, 1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn classification() {
        assert!(matches!(
            status_error("x", StatusCode::TOO_MANY_REQUESTS, None, ""),
            ActionError::Retryable { .. }
        ));
        assert!(matches!(
            status_error("x", StatusCode::BAD_GATEWAY, None, ""),
            ActionError::Retryable { .. }
        ));
        assert!(matches!(
            status_error("x", StatusCode::BAD_REQUEST, None, ""),
            ActionError::Final(_)
        ));
        assert!(matches!(
            status_error("x", StatusCode::NOT_FOUND, None, ""),
            ActionError::Final(_)
        ));
    }

    #[test]
    fn redirects_keep_credentials_on_the_configured_server() {
        let from = Url::parse("https://tableau.example.com/api/3.22/auth/signin").unwrap();
        let ok = |location: &str| safe_redirect(&from, location).unwrap().to_string();
        assert_eq!(
            ok("/pod/api/3.22/auth/signin"),
            "https://tableau.example.com/pod/api/3.22/auth/signin"
        );
        assert_eq!(
            ok("https://tableau.example.com:443/x"),
            "https://tableau.example.com/x"
        );
        let refused = |location: &str| safe_redirect(&from, location).unwrap_err();
        assert!(refused("https://evil.example/api").contains("another server (evil.example)"));
        assert!(refused("https://tableau.example.com.evil.example/").contains("another server"));
        assert!(refused("http://tableau.example.com/x").contains("https to plain http"));
        assert!(
            refused("https://tableau.example.com:8443/x").contains("(tableau.example.com:8443)")
        );
        let http = Url::parse("http://tableau.example.com/api").unwrap();
        assert_eq!(
            safe_redirect(&http, "https://tableau.example.com/api")
                .unwrap()
                .scheme(),
            "https"
        );
        assert!(safe_redirect(&http, "https://other.example/api").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // 2015-10-21T07:28:00Z, the example date of RFC 9110.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
