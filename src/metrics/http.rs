//! The HTTP listener's request handling, sans-IO: a request's bytes in, what to answer
//! out. Small and bounded on purpose: one request per connection (the answer closes
//! it), GET and HEAD only, the head at most [`MAX_REQUEST_BYTES`] with at most
//! [`MAX_HEADERS`] headers; anything else is a 4xx, never a panic. The worker owns the
//! sockets, the read timeout and the number of connections.

use bytes::Bytes;

/// Largest request head accepted; a longer one gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most headers accepted; more get 431.
pub const MAX_HEADERS: usize = 32;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`: the Prometheus exposition (needs a scrape of every loop).
    Metrics,
    /// `/api/stats`: the JSON the status page polls (needs a scrape).
    ApiStats,
    /// `/healthz`: 200 when every loop answers a scrape in time (needs a scrape).
    Healthz,
    /// `/readyz`: 200 once the listeners are up.
    Readyz,
    /// `/`: the status page.
    Status,
}

impl Route {
    /// Whether answering needs a snapshot of every loop.
    pub fn needs_scrape(self) -> bool {
        matches!(self, Route::Metrics | Route::ApiStats | Route::Healthz)
    }
}

/// The result of looking at the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A valid request; `head`: a HEAD request (answer without the body).
    Request { route: Route, head: bool },
    /// A bad request, answered at once.
    Error(Response),
}

/// A response, written whole with `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// `Allow` header of a 405.
    pub allow: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            allow: false,
        }
    }

    fn text(status: u16, body: &'static str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// Status line, headers and (unless `head`) the body.
    pub fn to_bytes(&self, head: bool) -> Bytes {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(&self.body);
        }
        Bytes::from(out)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Looks at the bytes a connection sent so far (at most [`MAX_REQUEST_BYTES`] are
/// kept by the caller; more is answered 431 here).
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || Parsed::Error(Response::text(431, "request head too large\n"));
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => too_large(),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_BYTES => too_large(),
        Ok(httparse::Status::Complete(_)) => route(req.method, req.path),
        Err(httparse::Error::TooManyHeaders) => too_large(),
        Err(_) => Parsed::Error(Response::text(400, "bad request\n")),
    }
}

fn route(method: Option<&str>, path: Option<&str>) -> Parsed {
    let (Some(method), Some(path)) = (method, path) else {
        return Parsed::Error(Response::text(400, "bad request\n"));
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let route = match path {
        "/metrics" => Route::Metrics,
        "/api/stats" => Route::ApiStats,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/" | "/index.html" => Route::Status,
        _ => return Parsed::Error(Response::text(404, "not found\n")),
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text(405, "method not allowed\n");
            r.allow = true;
            return Parsed::Error(r);
        }
    };
    Parsed::Request { route, head }
}

/// The 408 a connection gets when its request did not arrive in time.
pub fn timeout_response() -> Response {
    Response::text(408, "request timeout\n")
}

/// The status page: one self-contained HTML file, embedded in the binary.
pub const STATUS_PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(p: Parsed) -> u16 {
        match p {
            Parsed::Error(r) => r.status,
            Parsed::Request { .. } => 200,
            Parsed::Partial => 0,
        }
    }

    #[test]
    fn each_endpoint_is_routed_and_a_query_is_ignored() {
        for (path, route) in [
            ("/metrics", Route::Metrics),
            ("/metrics?x=1", Route::Metrics),
            ("/api/stats", Route::ApiStats),
            ("/healthz", Route::Healthz),
            ("/readyz", Route::Readyz),
            ("/", Route::Status),
        ] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                parse(req.as_bytes()),
                Parsed::Request { route, head: false },
                "{path}"
            );
        }
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            Parsed::Request {
                route: Route::Metrics,
                head: true
            }
        );
    }

    #[test]
    fn a_head_in_pieces_is_partial_until_complete() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut]), Parsed::Partial, "cut at {cut}");
        }
        assert_eq!(status_of(parse(req)), 200);
    }

    #[test]
    fn bad_requests_get_4xx() {
        assert_eq!(status_of(parse(b"GET /nope HTTP/1.1\r\n\r\n")), 404);
        let r = parse(b"POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(r), 405);
        assert_eq!(
            status_of(parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")),
            400
        );
        assert_eq!(status_of(parse(b"GET /metrics HTTP/9.9\r\n\r\n")), 400);
        assert_eq!(status_of(parse(b"GET  HTTP/1.1\r\n\r\n")), 400);
        // A head that never ends, over the bound.
        let mut long = b"GET /metrics HTTP/1.1\r\nX-A: ".to_vec();
        long.resize(MAX_REQUEST_BYTES, b'a');
        assert_eq!(status_of(parse(&long)), 431);
        // Too many headers.
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status_of(parse(&many)), 431);
    }

    #[test]
    fn no_input_panics_the_parser() {
        // A cheap deterministic sweep of byte strings: every prefix of a mix of
        // request bytes and garbage.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut v = Vec::new();
            let len = (seed % 200) as usize;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"GET /metrics HTTP/1.1\r\n: \x00\xff";
                v.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&v);
        }
    }

    #[test]
    fn responses_close_and_head_has_no_body() {
        let r = Response::new(200, "text/plain", "abc");
        let full = r.to_bytes(false);
        assert!(full.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(full.ends_with(b"\r\n\r\nabc"));
        let head = String::from_utf8(r.to_bytes(true).to_vec()).unwrap();
        assert!(head.contains("Content-Length: 3\r\n") && head.contains("Connection: close"));
        assert!(head.ends_with("\r\n\r\n"));
        let mut m = Response::text(405, "x");
        m.allow = true;
        assert!(String::from_utf8(m.to_bytes(false).to_vec())
            .unwrap()
            .contains("Allow: GET, HEAD\r\n"));
    }

    #[test]
    fn the_status_page_is_self_contained() {
        assert!(STATUS_PAGE.starts_with("<!doctype html>"));
        for external in ["http://", "https://", "//cdn", "<script src", "<link"] {
            assert!(
                !STATUS_PAGE.contains(external),
                "{external} in the status page"
            );
        }
        assert!(STATUS_PAGE.contains("/api/stats"));
    }
}
