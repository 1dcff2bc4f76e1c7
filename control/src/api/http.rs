//! The REST API's HTTP/1.1 wire handling: a bounded, sans-I/O parser of a request head
//! (request line and header fields) and the response writer.
//!
//! The parser looks at bytes only; it never panics on any input (a property test feeds it
//! arbitrary bytes) and refuses anything outside its limits with an [`HttpError`] that maps to
//! a status code. It understands what the API needs: origin-form targets, `Content-Length`
//! bodies and `Expect: 100-continue`. Chunked request bodies, absolute-form targets and
//! obsolete line folding are refused. Every response closes the connection.

use std::io::{self, Write};

/// Request methods. Methods that are well-formed tokens but not defined by RFC 9110 are
/// [`Method::Other`] (501 Not Implemented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: GET without the body.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// PATCH.
    Patch,
    /// OPTIONS.
    Options,
    /// CONNECT, TRACE: defined, never served.
    Unserved,
    /// Any other token.
    Other,
}

impl Method {
    fn from_token(t: &[u8]) -> Method {
        match t {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"CONNECT" | b"TRACE" => Method::Unserved,
            _ => Method::Other,
        }
    }

    /// The method's name as it appears on the wire (`Allow` headers).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Unserved => "CONNECT/TRACE",
            Method::Other => "(unknown)",
        }
    }
}

/// Limits of the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of the whole head (request line, fields, blank line).
    pub head_bytes: usize,
    /// Bytes of the request target.
    pub target_bytes: usize,
    /// Number of header fields.
    pub fields: usize,
    /// Bytes of the body (`Content-Length`).
    pub body_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            head_bytes: 16 * 1024,
            target_bytes: 2048,
            fields: 64,
            body_bytes: 64 * 1024,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path of the target (before any `?`).
    pub path: String,
    /// The query (after the first `?`), if any.
    pub query: Option<String>,
    /// The body length announced by `Content-Length` (0 without one).
    pub content_length: usize,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// The token of an `Authorization: Bearer <token>` field, if the request has one.
    pub bearer: Option<String>,
    /// Bytes of the head, including the blank line that ends it.
    pub len: usize,
}

/// Why a request head was refused; each maps to a status code ([`HttpError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line is not `METHOD SP /target SP HTTP/1.x`.
    #[error("malformed request line ({0}); expected `METHOD /path HTTP/1.1`")]
    BadRequestLine(&'static str),
    /// A header field is malformed.
    #[error("malformed header field ({0}); expected `Name: value` lines ending in CRLF")]
    BadField(&'static str),
    /// The head did not end within the limit.
    #[error("the request head is larger than {limit} bytes; send fewer or shorter header fields")]
    HeadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Too many header fields.
    #[error("the request has more than {limit} header fields")]
    TooManyFields {
        /// The limit.
        limit: usize,
    },
    /// The request target is too long.
    #[error("the request target is longer than {limit} bytes")]
    TargetTooLong {
        /// The limit.
        limit: usize,
    },
    /// The body is larger than the limit.
    #[error("the request body of {length} bytes is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// Announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// `Content-Length` is not a number, or several disagree.
    #[error("invalid Content-Length: {0}")]
    BadContentLength(&'static str),
    /// A body in a transfer coding (chunked).
    #[error(
        "request bodies in a transfer coding (chunked) are not supported; \
         send the body with a Content-Length"
    )]
    TransferCoding,
    /// An expectation other than `100-continue`.
    #[error("only the expectation `100-continue` is supported")]
    Expectation,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported; use HTTP/1.1")]
    Version,
    /// A method token that HTTP does not define.
    #[error("method not implemented; the API uses GET, HEAD, POST and DELETE")]
    UnknownMethod,
}

impl HttpError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequestLine(_)
            | HttpError::BadField(_)
            | HttpError::BadContentLength(_) => 400,
            HttpError::HeadTooLarge { .. } | HttpError::TooManyFields { .. } => 431,
            HttpError::TargetTooLong { .. } => 414,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::TransferCoding | HttpError::UnknownMethod => 501,
            HttpError::Expectation => 417,
            HttpError::Version => 505,
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a field value (visible ASCII, SP, HTAB, obs-text).
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Where the head ends: the index just past the blank line. Accepts CRLF and bare LF line
/// ends.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => return Some(i + 2),
                Some([b'\r', b'\n', ..]) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Splits `head` into lines without their CRLF or LF.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Parses the head at the start of `buf`. `Ok(None)`: the head is not complete yet and may
/// still fit; read more.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, HttpError> {
    let end = match head_end(buf) {
        Some(e) if e <= limits.head_bytes => e,
        Some(_) => {
            return Err(HttpError::HeadTooLarge {
                limit: limits.head_bytes,
            })
        }
        None if buf.len() >= limits.head_bytes => {
            return Err(HttpError::HeadTooLarge {
                limit: limits.head_bytes,
            })
        }
        None => {
            // Refuse a broken request line early, without waiting for the rest.
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
                parse_request_line(line, limits)?;
            }
            return Ok(None);
        }
    };
    let mut it = lines(&buf[..end]);
    let first = it.next().unwrap_or_default();
    let (method, path, query) = parse_request_line(first, limits)?;

    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    let mut bearer: Option<String> = None;
    let mut authorization = false;
    let mut fields = 0usize;
    for line in it {
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > limits.fields {
            return Err(HttpError::TooManyFields {
                limit: limits.fields,
            });
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::BadField("obsolete line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::BadField("no colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::BadField("invalid field name"));
        }
        let value = trim_ows(&line[colon + 1..]);
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(HttpError::BadField("control character in a field value"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            match content_length {
                Some(prev) if prev != n => {
                    return Err(HttpError::BadContentLength("several different values"))
                }
                _ => content_length = Some(n),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(HttpError::TransferCoding);
        } else if name.eq_ignore_ascii_case(b"authorization") {
            if std::mem::replace(&mut authorization, true) {
                return Err(HttpError::BadField("several Authorization fields"));
            }
            bearer = parse_bearer(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::Expectation);
            }
        }
    }
    let length = content_length.unwrap_or(0);
    let content_length = match usize::try_from(length) {
        Ok(n) if n <= limits.body_bytes => n,
        _ => {
            return Err(HttpError::BodyTooLarge {
                length,
                limit: limits.body_bytes,
            })
        }
    };
    Ok(Some(RequestHead {
        method,
        path,
        query,
        content_length,
        expect_continue,
        bearer,
        len: end,
    }))
}

/// The token of a `Bearer <token>` credential (the scheme is case-insensitive); `None` for
/// another scheme.
fn parse_bearer(v: &[u8]) -> Option<String> {
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = trim_ows(rest);
    // Field values are visible ASCII here (checked above); a token has no spaces.
    (!token.is_empty() && !token.contains(&b' '))
        .then(|| String::from_utf8_lossy(token).into_owned())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A list like `5, 5` is one value repeated; anything else that is not all digits is
/// refused.
fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    let mut out: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadContentLength("not a decimal number"));
        }
        let n = part.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
        match out {
            Some(prev) if prev != n => {
                return Err(HttpError::BadContentLength("several different values"))
            }
            _ => out = Some(n),
        }
    }
    out.ok_or(HttpError::BadContentLength("empty"))
}

type RequestLine = (Method, String, Option<String>);

fn parse_request_line(line: &[u8], limits: &HeadLimits) -> Result<RequestLine, HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine(
            "not three parts separated by single spaces",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadRequestLine("invalid method"));
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => {}
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::Version)
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => {
            return Err(HttpError::Version)
        }
        _ => return Err(HttpError::BadRequestLine("invalid HTTP version")),
    }
    if target.len() > limits.target_bytes {
        return Err(HttpError::TargetTooLong {
            limit: limits.target_bytes,
        });
    }
    if target.first() != Some(&b'/') {
        return Err(HttpError::BadRequestLine(
            "the target must be a path starting with `/`",
        ));
    }
    if !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HttpError::BadRequestLine("invalid character in the target"));
    }
    let method = match Method::from_token(method) {
        Method::Other => return Err(HttpError::UnknownMethod),
        m => m,
    };
    // Visible ASCII only, checked above: the conversion cannot fail.
    let target = String::from_utf8_lossy(target);
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Ok((method, path, query))
}

/// A response. Every response closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type of the body (none when the body is empty).
    pub content_type: Option<&'static str>,
    /// Methods allowed on the target (the `Allow` field of 405 answers).
    pub allow: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Ask for a bearer token (`WWW-Authenticate: Bearer`, on 401 answers).
    pub challenge: bool,
}

impl Response {
    /// A response with a body.
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: Some(content_type),
            allow: None,
            body,
            challenge: false,
        }
    }

    /// A response without a body.
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            content_type: None,
            allow: None,
            body: Vec::new(),
            challenge: false,
        }
    }

    /// Writes the response; for HEAD requests without the body (the head still says how
    /// long it would have been).
    pub fn write_to(&self, w: &mut impl Write, head_only: bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: ssi-dp\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status)
        );
        if let Some(ct) = self.content_type {
            head.push_str("Content-Type: ");
            head.push_str(ct);
            head.push_str("\r\n");
        }
        if let Some(allow) = &self.allow {
            head.push_str("Allow: ");
            head.push_str(allow);
            head.push_str("\r\n");
        }
        if self.challenge {
            head.push_str("WWW-Authenticate: Bearer realm=\"ssi-dp\"\r\n");
        }
        if self.status != 204 {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        if !head_only && self.status != 204 {
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_head(s.as_bytes(), &HeadLimits::default())
    }

    #[test]
    fn parses_a_simple_get() {
        let h = parse("GET /pages/0x1000?x=1 HTTP/1.1\r\nHost: a\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/pages/0x1000");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert_eq!(h.content_length, 0);
        assert!(!h.expect_continue);
        assert_eq!(
            h.len,
            "GET /pages/0x1000?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".len()
        );
    }

    #[test]
    fn accepts_bare_lf_and_http_1_0() {
        let h = parse("DELETE /nodes/3 HTTP/1.0\nContent-Length:  0 \n\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::Delete);
        assert_eq!(h.path, "/nodes/3");
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        assert_eq!(parse("GET /nodes HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse("GET /no"), Ok(None));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn a_broken_request_line_is_refused_before_the_head_ends() {
        assert_eq!(parse("garbage\r\n").unwrap_err().status(), 400);
    }

    #[test]
    fn body_length_and_expectation() {
        let h = parse("POST /nodes HTTP/1.1\r\ncontent-length: 12\r\nExpect: 100-Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, 12);
        assert!(h.expect_continue);
        let e = parse("POST /nodes HTTP/1.1\r\nExpect: something\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 417);
    }

    #[test]
    fn content_length_must_be_one_number() {
        for bad in ["x", "-1", "1 2", "", "99999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(parse(&req).unwrap_err().status(), 400, "{bad:?}");
        }
        let two = "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse(two).unwrap_err(),
            HttpError::BadContentLength("several different values")
        );
        let same = "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse(same).unwrap().unwrap().content_length, 3);
    }

    #[test]
    fn limits_are_enforced() {
        let limits = HeadLimits {
            head_bytes: 64,
            target_bytes: 8,
            fields: 2,
            body_bytes: 10,
        };
        let p = |s: &str| parse_head(s.as_bytes(), &limits);
        assert_eq!(
            p("GET /123456789 HTTP/1.1\r\n\r\n").unwrap_err().status(),
            414
        );
        assert_eq!(
            p("GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n").unwrap_err(),
            HttpError::TooManyFields { limit: 2 }
        );
        assert_eq!(
            p("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n").unwrap_err(),
            HttpError::BodyTooLarge {
                length: 11,
                limit: 10
            }
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "y".repeat(80));
        assert_eq!(p(&long).unwrap_err().status(), 431);
        let long_done = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "y".repeat(80));
        assert_eq!(p(&long_done).unwrap_err().status(), 431);
    }

    #[test]
    fn refuses_what_it_does_not_speak() {
        let cases = [
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTP/2\r\n\r\n", 505),
            ("GET / HTTQ/1.1\r\n\r\n", 400),
            ("GET http://x/ HTTP/1.1\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1 \r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("BREW / HTTP/1.1\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n", 400),
            ("GET /\x7f HTTP/1.1\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let got = parse(req).map_err(|e| e.status());
            assert_eq!(got, Err(status), "{req:?}");
        }
    }

    #[test]
    fn responses_carry_length_type_and_allow() {
        let mut r = Response::new(405, "application/json", b"{}".to_vec());
        r.allow = Some("GET, HEAD".into());
        let mut out = Vec::new();
        r.write_to(&mut out, false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(s.contains("\r\nContent-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));

        let mut head_only = Vec::new();
        r.write_to(&mut head_only, true).unwrap();
        assert!(String::from_utf8(head_only).unwrap().ends_with("\r\n\r\n"));

        let mut no_content = Vec::new();
        Response::empty(204)
            .write_to(&mut no_content, false)
            .unwrap();
        let s = String::from_utf8(no_content).unwrap();
        assert!(!s.contains("Content-Length"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let limits = HeadLimits { head_bytes: 300, target_bytes: 40, fields: 4, body_bytes: 100 };
            if let Ok(Some(h)) = parse_head(&bytes, &limits) {
                prop_assert!(h.len <= bytes.len() && h.len <= 300);
                prop_assert!(h.content_length <= 100);
                prop_assert!(h.path.starts_with('/'));
            }
        }

        #[test]
        fn never_panics_on_near_http(
            line in "(GET|POST|DELETE|HEAD|X) /[a-z0-9/?{}%]{0,20} HTTP/1\\.[01]",
            fields in proptest::collection::vec("[A-Za-z-]{0,12}:[ -~\t]{0,20}", 0..6),
            lf in any::<bool>(),
        ) {
            let nl = if lf { "\n" } else { "\r\n" };
            let mut req = line.clone();
            req.push_str(nl);
            for f in &fields {
                req.push_str(f);
                req.push_str(nl);
            }
            req.push_str(nl);
            match parse(&req) {
                Ok(Some(h)) => prop_assert_eq!(h.len, req.len()),
                Ok(None) => prop_assert!(false, "a complete head was not recognised"),
                Err(e) => prop_assert!(e.status() >= 400),
            }
        }
    }
}
