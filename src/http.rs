//! The metrics endpoint (`--metrics-listen`): a minimal HTTP/1.x server inside the store's
//! mio loop, answering `GET /metrics` with the page of [`crate::metrics`].
//!
//! A scraper never costs the store more than a bounded amount: at most [`MAX_SCRAPERS`]
//! connections at once (more are accepted and closed at once), at most
//! [`MAX_REQUEST_BYTES`] of request per connection, one response each (then the connection
//! closes), and [`DEADLINE`] for the whole exchange, after which the connection is dropped
//! whatever state it is in (a scraper that sends half a request, or never reads the answer).
//! Sockets are non-blocking; nothing here waits. Requests are parsed with `httparse`; a
//! method other than GET gets 405, another path 404, anything unparsable 400, an oversized
//! request 431.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::metrics::CONTENT_TYPE;

/// The listener's token in the store's poll.
pub const LISTENER: Token = Token(usize::MAX - 2);
/// Connection `k` has token `FIRST_CONN - k` (the store's clients count up from 0).
const FIRST_CONN: usize = usize::MAX - 3;
/// Most scrape connections at once.
pub const MAX_SCRAPERS: usize = 8;
/// Largest request (line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Time a scrape connection may live, from accept to the last byte of the answer.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// One scrape connection.
struct HttpConn {
    stream: TcpStream,
    /// Request bytes received.
    input: Vec<u8>,
    /// The response, once the request is complete.
    output: Option<Vec<u8>>,
    /// Response bytes written.
    written: usize,
    deadline: Instant,
}

/// The metrics listener and its connections.
pub struct MetricsServer {
    listener: TcpListener,
    conns: Slab<HttpConn>,
    accept_failing: bool,
}

/// What a complete request is answered with.
fn respond(status: u16, reason: &str, extra: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error(status: u16, reason: &str, extra: &str) -> Vec<u8> {
    respond(
        status,
        reason,
        extra,
        "text/plain; charset=utf-8",
        &format!("{status} {reason}\n"),
    )
}

/// The answer to `input` once it holds a complete request (`None`: not complete yet).
fn answer(input: &[u8], page: &mut dyn FnMut() -> String) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(input) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if input.len() < MAX_REQUEST_BYTES => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Some(error(431, "Request Header Fields Too Large", ""));
        }
        Err(_) => return Some(error(400, "Bad Request", "")),
    }
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Some(match (req.method.unwrap_or(""), path) {
        ("GET", "/metrics") => respond(200, "OK", "", CONTENT_TYPE, &page()),
        ("GET", _) => error(404, "Not Found", ""),
        _ => error(405, "Method Not Allowed", "Allow: GET\r\n"),
    })
}

impl MetricsServer {
    /// Binds `addr` and registers the listener with `registry`.
    pub fn bind(addr: SocketAddr, registry: &Registry) -> io::Result<MetricsServer> {
        let mut listener = TcpListener::bind(addr)?;
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(MetricsServer {
            listener,
            conns: Slab::with_capacity(MAX_SCRAPERS),
            accept_failing: false,
        })
    }

    /// The address it listens on (the port, when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether `token` is the listener's or one of its connections'.
    pub fn owns(token: Token) -> bool {
        token == LISTENER || (token.0 <= FIRST_CONN && token.0 > FIRST_CONN - MAX_SCRAPERS)
    }

    /// Handles a readiness event of one of its tokens. `page` renders the metrics page; it
    /// is called only for a complete `GET /metrics`.
    pub fn on_event(
        &mut self,
        token: Token,
        registry: &Registry,
        page: &mut dyn FnMut() -> String,
    ) {
        if token == LISTENER {
            self.accept(registry);
            return;
        }
        let key = FIRST_CONN - token.0;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let done = match progress(c, page) {
            Ok(done) => done,
            Err(e) => {
                debug!("metrics connection: {e}");
                true
            }
        };
        if done {
            self.close(key, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    self.accept_failing = false;
                    if self.conns.len() >= MAX_SCRAPERS {
                        debug!("metrics: refusing {peer}: {MAX_SCRAPERS} scrapes in progress");
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let token = Token(FIRST_CONN - entry.key());
                    if let Err(e) = registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("metrics: cannot watch a connection: {e}");
                        continue;
                    }
                    entry.insert(HttpConn {
                        stream,
                        input: Vec::new(),
                        output: None,
                        written: 0,
                        deadline: Instant::now() + DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds and the like: the next connection's edge retries.
                    if !self.accept_failing {
                        warn!("metrics: accept failed: {e}");
                        self.accept_failing = true;
                    }
                    return;
                }
            }
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// The earliest deadline of its connections.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }

    /// Drops the connections whose deadline has passed.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            info!("metrics: dropping a scrape connection that did not finish in {DEADLINE:?}");
            self.close(key, registry);
        }
    }
}

/// Reads what is there, answers a complete request, writes what the socket takes. Returns
/// whether the connection is finished.
fn progress(c: &mut HttpConn, page: &mut dyn FnMut() -> String) -> io::Result<bool> {
    if c.output.is_none() {
        let mut buf = [0u8; 4096];
        loop {
            let room = MAX_REQUEST_BYTES - c.input.len();
            if room == 0 {
                break;
            }
            let want = room.min(buf.len());
            match c.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    if c.input.is_empty() {
                        return Ok(true);
                    }
                    // The request ended early: answer what is there (400 if incomplete).
                    let answer =
                        answer(&c.input, page).unwrap_or_else(|| error(400, "Bad Request", ""));
                    c.output = Some(answer);
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if c.output.is_none() {
            c.output = answer(&c.input, page);
        }
    }
    let Some(out) = &c.output else {
        return Ok(false);
    };
    while c.written < out.len() {
        match c.stream.write(&out[c.written..]) {
            Ok(0) => return Ok(true),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(input: &[u8]) -> Option<String> {
        answer(input, &mut || "page".to_string()).map(|r| {
            String::from_utf8_lossy(&r)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
    }

    #[test]
    fn requests_and_their_answers() {
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        assert_eq!(
            status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\n\r\n").as_deref(),
            Some("HTTP/1.1 404 Not Found")
        );
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n").as_deref(),
            Some("HTTP/1.1 405 Method Not Allowed")
        );
        assert_eq!(
            status(b"\x00\x01garbage\r\n\r\n").as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost"), None, "incomplete");
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while huge.len() < MAX_REQUEST_BYTES {
            huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            status(&huge).as_deref(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
    }

    #[test]
    fn the_page_is_rendered_only_for_a_complete_get() {
        let mut calls = 0;
        let mut page = || {
            calls += 1;
            "p".to_string()
        };
        answer(b"GET / HTTP/1.1\r\n\r\n", &mut page);
        answer(b"GET /metrics HTTP/1.1\r\n", &mut page);
        answer(b"GET /metrics HTTP/1.1\r\n\r\n", &mut page);
        assert_eq!(calls, 1);
    }
}
