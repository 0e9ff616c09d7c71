//! Which browser origins may use a bridge, one allow-list (`ingest.corsOrigins`) for every
//! route a page calls: the CORS layer and the security headers of `/produce*`, `/sse`,
//! `/health` and `/stats`, and the `Origin` check of the WebSocket upgrade.
//!
//! WebSocket has no CORS: a browser opens a socket to any origin and only tells the server where
//! the page came from (`Origin`). So when an allow-list is set, an upgrade whose `Origin` is
//! neither in it nor the bridge's own origin is refused with 403 before any subscription (a
//! page elsewhere cannot ride on a user's network position or cookies). A request without
//! `Origin` is not a browser's and is not checked; `*` allows every origin.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::relay::Shared;

/// The allow-list as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// Exact origins (`scheme://host[:port]`, without a trailing `/`); empty with `any`.
    list: Vec<String>,
    /// `*` was listed.
    any: bool,
}

impl Origins {
    /// From `ingest.corsOrigins`; an entry that is not a valid header value is an error.
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let any = origins.iter().any(|o| o == "*");
        let mut list = Vec::new();
        if !any {
            for o in origins {
                let o = o.trim_end_matches('/');
                HeaderValue::from_str(o)
                    .map_err(|_| format!("ingest.corsOrigins: {o:?} is not a valid origin"))?;
                list.push(o.to_string());
            }
        }
        Ok(Self { list, any })
    }

    /// Whether no allow-list is set (no cross-origin access over CORS, no `Origin` check).
    pub fn is_empty(&self) -> bool {
        !self.any && self.list.is_empty()
    }

    /// The CORS layer for routes answering `methods`; `None` without an allow-list.
    pub fn cors(&self, methods: &[Method]) -> Option<CorsLayer> {
        if self.is_empty() {
            return None;
        }
        let allow = if self.any {
            AllowOrigin::any()
        } else {
            // Checked in `new`.
            AllowOrigin::list(
                self.list
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods(methods.to_vec())
                // `Last-Event-ID` is what an `EventSource` sends back when it reconnects.
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    header::HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([header::RETRY_AFTER])
                .max_age(Duration::from_secs(600)),
        )
    }

    /// Pure: whether a WebSocket upgrade with these headers may proceed.
    pub fn allows_upgrade(&self, headers: &HeaderMap) -> bool {
        if self.is_empty() || self.any {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if self.list.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        // The bridge's own origin (a page it serves, such as standalone's viewer).
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}

/// The security headers `helmet` sets that matter for a JSON API or an event stream, added
/// unless a handler set them.
pub async fn security_headers(mut response: Response) -> Response {
    const HEADERS: [(header::HeaderName, &str); 8] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=15552000; includeSubDomains",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_XSS_PROTECTION, "0"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-site",
        ),
    ];
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// The fan-out's routes (`/ws`, `/sse`, `/health`, `/stats`) under the allow-list: the
/// upgrade's `Origin` check, CORS for `GET`, and the security headers.
pub fn protect_relay(router: Router, origins: &Origins, shared: Arc<Shared>) -> Router {
    let check = origins.clone();
    let mut router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let (check, shared) = (check.clone(), shared.clone());
            async move {
                if is_websocket_upgrade(request.headers())
                    && !check.allows_upgrade(request.headers())
                {
                    return forbidden_origin(&shared, request.headers());
                }
                next.run(request).await
            }
        },
    ));
    if let Some(cors) = origins.cors(&[Method::GET]) {
        router = router.layer(cors);
    }
    router.layer(axum::middleware::map_response(security_headers))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn forbidden_origin(shared: &Shared, headers: &HeaderMap) -> Response {
    shared.metrics.reject("forbidden_origin");
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("?");
    tracing::debug!(
        origin,
        "WebSocket upgrade refused: origin not in ingest.corsOrigins"
    );
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": {
            "code": "forbidden_origin",
            "message": format!("origin {origin} is not allowed (ingest.corsOrigins)"),
        }})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn list(origins: &[&str]) -> Origins {
        Origins::new(&origins.iter().map(|o| o.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn an_upgrade_from_an_origin_outside_the_allow_list_is_refused() {
        let origins = list(&["https://app.example.com/", "http://localhost:3000"]);
        let host = ("host", "bridge.example.com");
        assert!(origins.allows_upgrade(&headers(&[host, ("origin", "https://app.example.com")])));
        assert!(origins.allows_upgrade(&headers(&[host, ("origin", "http://localhost:3000")])));
        assert!(!origins.allows_upgrade(&headers(&[host, ("origin", "https://evil.example")])));
        assert!(
            !origins.allows_upgrade(&headers(&[host, ("origin", "http://app.example.com")])),
            "the scheme is part of the origin"
        );
        assert!(!origins.allows_upgrade(&headers(&[host, ("origin", "null")])));
        // The bridge's own pages, and clients that are not browsers.
        assert!(
            origins.allows_upgrade(&headers(&[host, ("origin", "https://bridge.example.com")]))
        );
        assert!(origins.allows_upgrade(&headers(&[host])));
    }

    #[test]
    fn without_an_allow_list_or_with_a_star_every_upgrade_proceeds() {
        let evil = headers(&[("host", "b"), ("origin", "https://evil.example")]);
        assert!(list(&[]).allows_upgrade(&evil));
        assert!(list(&["*", "https://a.example"]).allows_upgrade(&evil));
        assert!(list(&[]).cors(&[Method::GET]).is_none());
        assert!(list(&["*"]).cors(&[Method::GET]).is_some());
    }

    #[test]
    fn an_origin_that_is_not_a_header_value_is_a_config_error() {
        let err = Origins::new(&["https://a\nb".to_string()]).expect_err("refused");
        assert!(err.contains("ingest.corsOrigins"), "{err}");
    }
}
