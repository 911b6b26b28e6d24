//! Without a JWT secret (README "Security: auth and limits"): only this machine, and none of the
//! web pages it visits.
//!
//! With no secret there is no auth, and pgfeed binds only loopback. That alone would still let any
//! web page the local user visits read and write everything through the user's browser: a
//! cross-site WebSocket (browsers do not apply CORS to WebSockets), a `no-cors` multipart POST, or
//! a page whose DNS name is re-pointed at 127.0.0.1 after it loaded (DNS rebinding), which makes
//! pgfeed same-origin with the attacker. So, on every route, while no secret is set:
//!
//! - the `Host` must be a loopback name or address (`localhost`, `*.localhost`, `127.0.0.0/8`,
//!   `[::1]`, any port), or the host of an origin listed in `--allowed-origins`. A rebinding page
//!   always sends its own DNS name, so it is refused. With `--insecure-no-auth` (a deliberate
//!   non-loopback bind) any IP address is accepted too: an address is never a rebinding name.
//! - a stream (`/ws`, `/events`, `/api/changes`, `/socket.io/`) or a write (any method but GET, HEAD, OPTIONS)
//!   whose `Origin` is present must come from the same host (a loopback origin on the `Host`'s
//!   port, or the `Host` itself) or from a listed origin. Reads from another site are let through:
//!   without CORS headers its page cannot see the answer.
//!
//! A request without `Host` or `Origin` is not a browser's, and is let through. With a secret the
//! token is what protects, and this layer does nothing.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Routes that stream, or wait, whatever their method: a cross-site page must not hold them open.
const STREAMS: &[&str] = &["/ws", "/events", "/api/changes", "/socket.io/", "/socket.io"];

pub async fn local_only(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth.enabled() {
        return next.run(req).await;
    }
    let policy = Policy {
        any_address: state.insecure_no_auth,
        allowed_origins: &state.allowed_origins,
    };
    match policy.judge(req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => ApiError::Forbidden(why).into_response(),
    }
}

/// What a server without a secret accepts.
struct Policy<'a> {
    /// `--insecure-no-auth`: any IP address is a valid `Host` too.
    any_address: bool,
    /// `--allowed-origins`: trusted as origins, and their hosts as `Host`.
    allowed_origins: &'a [String],
}

/// A host name (lower case, without brackets or a trailing dot) and its port, if given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    name: String,
    port: Option<u16>,
}

impl HostPort {
    fn parse_authority(s: &str) -> Option<HostPort> {
        // `user@host` is valid in an authority, never in a Host header or an origin.
        if s.contains('@') {
            return None;
        }
        let authority: Authority = s.parse().ok()?;
        Some(HostPort {
            name: normal_name(authority.host()),
            port: authority.port_u16(),
        })
    }

    /// An origin (`scheme://host[:port]`) with its port filled in, and its scheme's default port.
    fn parse_origin(s: &str) -> Option<(HostPort, u16)> {
        let uri: Uri = s.parse().ok()?;
        let default = match uri.scheme_str()? {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        };
        let authority = uri.authority()?.as_str();
        let mut origin = HostPort::parse_authority(authority)?;
        origin.port = Some(origin.port.unwrap_or(default));
        Some((origin, default))
    }

    fn ip(&self) -> Option<IpAddr> {
        self.name.parse().ok()
    }

    fn is_loopback(&self) -> bool {
        self.name == "localhost"
            || self.name.ends_with(".localhost")
            || self.ip().is_some_and(|ip| match ip {
                IpAddr::V4(v4) => v4.is_loopback(),
                IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            })
    }
}

fn normal_name(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

impl Policy<'_> {
    fn judge(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), String> {
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`.
        let host = match headers.get(header::HOST) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(HostPort::parse_authority)
                    .ok_or("the Host header is malformed")?,
            ),
            None => uri.authority().and_then(|a| HostPort::parse_authority(a.as_str())),
        };
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Err(format!(
                    "Host {:?} is not a loopback name or address: without --jwt-secret pgfeed answers \
                     only requests made to this machine by name (list other names in --allowed-origins)",
                    host.name
                ));
            }
        }
        let stream_or_write =
            !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || STREAMS.contains(&uri.path());
        if !stream_or_write {
            return Ok(());
        }
        for origin in headers.get_all(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin, host.as_ref()) {
                return Err(format!(
                    "origin {origin:?} is another site: without --jwt-secret only pages served by \
                     pgfeed itself, or listed in --allowed-origins, may open streams or write"
                ));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &HostPort) -> bool {
        host.is_loopback()
            || (self.any_address && host.ip().is_some())
            || self
                .listed()
                .any(|origin| origin.name == host.name && host.port.is_none_or(|port| origin.port == Some(port)))
    }

    fn origin_allowed(&self, origin: &str, host: Option<&HostPort>) -> bool {
        if self.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let (Some((origin, default_port)), Some(host)) = (HostPort::parse_origin(origin), host) else {
            // `null` (a sandboxed frame, a file), an unparsable origin, or nothing to compare with.
            return false;
        };
        // A Host without a port was reached on the default port of the origin's scheme.
        let same_port = Some(host.port.unwrap_or(default_port)) == origin.port;
        same_port && (origin.name == host.name || (origin.is_loopback() && host.is_loopback()))
    }

    fn listed(&self) -> impl Iterator<Item = HostPort> + '_ {
        self.allowed_origins
            .iter()
            .filter_map(|o| HostPort::parse_origin(o).map(|(origin, _)| origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(policy: &Policy, method: Method, path: &str, host: Option<&str>, origin: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, h.parse().unwrap());
        }
        if let Some(o) = origin {
            headers.insert(header::ORIGIN, o.parse().unwrap());
        }
        policy.judge(&method, &path.parse().unwrap(), &headers).is_ok()
    }

    const LOCAL: Policy = Policy {
        any_address: false,
        allowed_origins: &[],
    };

    #[test]
    fn only_loopback_hosts_are_answered() {
        for host in [
            "localhost",
            "localhost:8080",
            "LocalHost.:8080",
            "app.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(judge(&LOCAL, Method::GET, "/api/studies", Some(host), None), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "0.0.0.0:8080",
            "10.0.0.1",
            "[::2]",
            "user@localhost",
            "",
        ] {
            assert!(!judge(&LOCAL, Method::GET, "/", Some(host), None), "{host}");
        }
        assert!(judge(&LOCAL, Method::GET, "/", None, None));
    }

    #[test]
    fn streams_and_writes_from_other_sites_are_refused_reads_are_not() {
        let host = Some("127.0.0.1:8080");
        // Same host and port is the same server, whatever the scheme (a proxy may add TLS).
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "https://127.0.0.1:8080",
        ] {
            assert!(
                judge(&LOCAL, Method::POST, "/api/studies", host, Some(origin)),
                "{origin}"
            );
            assert!(judge(&LOCAL, Method::GET, "/ws", host, Some(origin)), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "http://localhost:3000",
            "https://127.0.0.1:8081",
            "null",
            "garbage",
        ] {
            assert!(
                !judge(&LOCAL, Method::POST, "/api/studies/1/files", host, Some(origin)),
                "{origin}"
            );
            assert!(
                !judge(&LOCAL, Method::DELETE, "/api/studies/1", host, Some(origin)),
                "{origin}"
            );
            assert!(!judge(&LOCAL, Method::GET, "/ws", host, Some(origin)), "{origin}");
            assert!(!judge(&LOCAL, Method::GET, "/events", host, Some(origin)), "{origin}");
            assert!(
                !judge(&LOCAL, Method::GET, "/api/changes", host, Some(origin)),
                "{origin}"
            );
            assert!(
                judge(&LOCAL, Method::GET, "/api/studies", host, Some(origin)),
                "{origin}"
            );
        }
        // Default ports: `Host: localhost` is port 80 for an http origin.
        assert!(judge(
            &LOCAL,
            Method::POST,
            "/",
            Some("localhost"),
            Some("http://localhost")
        ));
        assert!(!judge(
            &LOCAL,
            Method::POST,
            "/",
            Some("localhost"),
            Some("http://localhost:81")
        ));
    }

    #[test]
    fn listed_origins_are_trusted_and_their_hosts_answered() {
        let listed = ["https://admin.example".to_owned(), "http://localhost:3000".to_owned()];
        let policy = Policy {
            any_address: false,
            allowed_origins: &listed,
        };
        let host = Some("127.0.0.1:8080");
        assert!(judge(&policy, Method::POST, "/", host, Some("https://admin.example")));
        assert!(judge(&policy, Method::GET, "/ws", host, Some("http://localhost:3000")));
        assert!(!judge(&policy, Method::GET, "/ws", host, Some("http://localhost:3001")));
        assert!(judge(&policy, Method::GET, "/", Some("admin.example"), None));
        assert!(judge(&policy, Method::GET, "/", Some("admin.example:443"), None));
        assert!(!judge(&policy, Method::GET, "/", Some("admin.example:8443"), None));
    }

    #[test]
    fn insecure_no_auth_also_answers_addresses_never_other_names() {
        let policy = Policy {
            any_address: true,
            allowed_origins: &[],
        };
        let host = Some("192.0.2.7:8080");
        assert!(judge(&policy, Method::GET, "/", host, None));
        assert!(judge(&policy, Method::GET, "/", Some("[2001:db8::1]:8080"), None));
        assert!(!judge(
            &policy,
            Method::GET,
            "/",
            Some("rebound.evil.example:8080"),
            None
        ));
        assert!(judge(&policy, Method::POST, "/", host, Some("http://192.0.2.7:8080")));
        assert!(!judge(&policy, Method::POST, "/", host, Some("http://192.0.2.8:8080")));
        assert!(!judge(&policy, Method::GET, "/ws", host, Some("https://evil.example")));
    }
}
