//! The console (docs/behaviour.md section 16): what freshet knows, for the people who
//! watch it without a shell. A listener of its own (`[admin] listen`, never the webhook
//! listener), server-rendered pages that read the journal through the same calls as the
//! CLI, and the CLI's writes only (`freshet retry`, `alerts --mute/--unmute`), each a
//! POST from a form with a per-session CSRF token. `security.rs` says who may use it;
//! `pages.rs` renders it.

mod pages;
mod security;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, Method, Response, StatusCode};
use warp::hyper::Body;
use warp::Filter;

use crate::config::{AdminConfig, Config};
use crate::journal::Journal;
use crate::rules::RuleSet;

/// The largest form body the console reads.
const MAX_FORM_BYTES: u64 = 64 * 1024;

/// The stylesheet, and the path it is served at: its content hash in the name, so a
/// new build's CSS is never read from an old cache.
const CSS: &str = include_str!("console.css");
static CSS_PATH: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(CSS.as_bytes()));
    format!("/static/console.{}.css", &digest[..16])
});

/// What the console reads and steers.
pub struct Console {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    pub rules: Arc<ArcSwap<RuleSet>>,
    /// As it was at the start: where it listens and who may use it change at a restart.
    pub admin: AdminConfig,
    sessions: security::Sessions,
}

/// One request, as the console routes it.
pub(crate) struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A query (or form) parameter; empty values count as absent.
    pub fn param(&self, text: &str, name: &str) -> Option<String> {
        url::form_urlencoded::parse(text.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .filter(|value| !value.is_empty())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.param(&self.query, name)
    }

    pub fn form_param(&self, name: &str) -> Option<String> {
        self.param(&String::from_utf8_lossy(&self.body), name)
    }

    /// Every value of a repeated form parameter (`id=1&id=2`).
    pub fn form_params(&self, name: &str) -> Vec<String> {
        url::form_urlencoded::parse(&self.body)
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Console {
    pub fn new(
        journal: Journal,
        config: Arc<ArcSwap<Config>>,
        rules: Arc<ArcSwap<RuleSet>>,
        admin: AdminConfig,
    ) -> Console {
        Console {
            journal,
            config,
            rules,
            admin,
            sessions: security::Sessions::default(),
        }
    }

    /// Binds `admin.listen` and serves until `stop`; returns the bound address (a `:0`
    /// port is a free one) and the server's task.
    pub fn serve(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let console = Arc::clone(&self);
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(
                move |method: Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: HeaderMap,
                      body| {
                    let console = Arc::clone(&console);
                    async move {
                        let Some(body) = read_form(body).await else {
                            let mut response =
                                plain(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
                            security::add_headers(&mut response);
                            return response;
                        };
                        let request = Request {
                            method,
                            path: path.as_str().to_string(),
                            query,
                            headers,
                            body,
                        };
                        let mut response = console.handle(&request).await;
                        security::add_headers(&mut response);
                        response
                    }
                },
            )
            .recover(|_rejection: warp::Rejection| async move {
                // Too large a body, or a request warp could not read.
                let mut response = plain(StatusCode::BAD_REQUEST, "bad request");
                security::add_headers(&mut response);
                Ok::<_, std::convert::Infallible>(response)
            });
        let (addr, server) = warp::serve(route)
            .try_bind_with_graceful_shutdown(
                self.admin.listen,
                async move { stop.cancelled().await },
            )
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot listen on admin.listen {}: {error}",
                    self.admin.listen
                )
            })?;
        Ok((addr, tokio::spawn(server)))
    }

    /// Every request: the Host allowlist, who is asking, the CSRF check on writes, then
    /// the page or the write.
    pub(crate) async fn handle(&self, request: &Request) -> Response<Body> {
        if !security::host_allowed(&self.admin, request.header("host")) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this console answers only for its own host names (admin.hosts)",
            );
        }
        if request.path == CSS_PATH.as_str() && request.method == Method::GET {
            return Response::builder()
                .header("content-type", "text/css; charset=utf-8")
                .body(Body::from(CSS))
                .expect("a static answer");
        }
        let token = self.admin.token.as_ref();
        let bearer = token
            .is_some_and(|token| security::bearer_matches(token, request.header("authorization")));
        let cookie = security::session_cookie(&request.headers);
        let mut session = cookie
            .as_deref()
            .and_then(|id| self.sessions.get(id).map(|s| (id.to_string(), s)));

        if request.path == "/login" {
            return self
                .login(request, token, session.as_ref().map(|(_, s)| s))
                .await;
        }
        let signed_in =
            bearer || token.is_none() || session.as_ref().is_some_and(|(_, s)| s.signed_in);
        if !signed_in {
            return if request.method == Method::GET {
                redirect("/login")
            } else {
                plain(StatusCode::UNAUTHORIZED, "sign in first")
            };
        }
        // Without a token, a session still carries the CSRF token of its forms.
        let mut new_cookie = None;
        if session.is_none() && !bearer {
            let (id, created) = self.sessions.create(true);
            new_cookie = Some(security::set_cookie(&id, &request.headers));
            session = Some((id, created));
        }
        let csrf = session
            .as_ref()
            .map(|(_, s)| s.csrf.clone())
            .unwrap_or_default();
        let mut response = if request.method == Method::POST {
            if self.admin.read_only {
                plain(
                    StatusCode::FORBIDDEN,
                    "this console is read-only (admin.read_only)",
                )
            } else if !(bearer || self.form_is_ours(request, &csrf)) {
                plain(
                    StatusCode::FORBIDDEN,
                    "refused: the form's CSRF token or its origin is not this console's",
                )
            } else {
                pages::write(self, request).await
            }
        } else if request.method == Method::GET || request.method == Method::HEAD {
            pages::read(self, request, &csrf).await
        } else {
            plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only")
        };
        if let Some(cookie) = new_cookie {
            if let Ok(value) = cookie.parse() {
                response.headers_mut().append("set-cookie", value);
            }
        }
        response
    }

    /// Whether a form was posted from this console's own page: its CSRF field is the
    /// session's token, and its origin is this console's. (A request with the Bearer
    /// token carries no ambient credentials and needs neither.)
    fn form_is_ours(&self, request: &Request, csrf: &str) -> bool {
        let expected = crate::config::Secret::new(csrf.to_string());
        !csrf.is_empty()
            && security::same_origin(&request.headers)
            && request
                .form_param("csrf")
                .is_some_and(|given| crate::ingest::signature::secrets_equal(&given, &expected))
    }

    /// `GET /login`: the token form; `POST /login`: signs in with the token.
    async fn login(
        &self,
        request: &Request,
        token: Option<&crate::config::Secret>,
        session: Option<&security::Session>,
    ) -> Response<Body> {
        let Some(token) = token else {
            return redirect("/");
        };
        if request.method == Method::POST {
            // A login form posted from another site is refused like any other write.
            if !security::same_origin(&request.headers) {
                return plain(
                    StatusCode::FORBIDDEN,
                    "refused: not posted from this console",
                );
            }
            let given = request.form_param("token").unwrap_or_default();
            if !crate::ingest::signature::secrets_equal(&given, token) {
                tracing::warn!("Console sign-in refused: wrong token.");
                return pages::login_page(
                    StatusCode::UNAUTHORIZED,
                    Some("That is not the console's token."),
                );
            }
            let (id, _) = self.sessions.create(true);
            let mut response = redirect("/");
            if let Ok(value) = security::set_cookie(&id, &request.headers).parse() {
                response.headers_mut().insert("set-cookie", value);
            }
            return response;
        }
        if session.is_some_and(|s| s.signed_in) {
            return redirect("/");
        }
        pages::login_page(StatusCode::OK, None)
    }
}

/// The request's body, up to [`MAX_FORM_BYTES`] (None past it, or when it breaks off).
async fn read_form<S, B>(mut body: S) -> Option<Bytes>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.ok()?;
        if collected.len() + chunk.remaining() > MAX_FORM_BYTES as usize {
            return None;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            collected.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Some(collected.freeze())
}

/// A short text answer.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(text.to_string()))
        .expect("a plain answer")
}

/// 303 See Other: after a post, or to the login form.
pub(crate) fn redirect(to: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", to)
        .body(Body::empty())
        .expect("a redirect")
}

/// The stylesheet's path, for the pages.
pub(crate) fn css_path() -> &'static str {
    CSS_PATH.as_str()
}
