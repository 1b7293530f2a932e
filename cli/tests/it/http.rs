//! A minimal HTTP/1.1 client over `TcpStream` for the server tests: whole requests, and an SSE
//! reader that can be dropped mid-stream (which closes the connection, like a client going away).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Longest any single read may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn head(method: &str, path: &str, body_len: Option<usize>) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(n) = body_len {
        h.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {n}\r\n"
        ));
    }
    h.push_str("\r\n");
    h
}

/// Reads the status line and headers.
fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).expect("header line");
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    })
}

/// Reads one chunk of a chunked body; `None` at the last (empty) chunk or EOF.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
    let mut data = vec![0; n];
    r.read_exact(&mut data).ok()?;
    let mut crlf = [0; 2];
    r.read_exact(&mut crlf).ok()?;
    if n == 0 { None } else { Some(data) }
}

/// One whole request.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    let mut s = connect(addr);
    let mut req = head(method, path, body.map(<[u8]>::len)).into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    // The server may answer (413) before reading everything; keep reading what it said.
    let _ = s.write_all(&req);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if is_chunked(&headers) {
        while let Some(c) = read_chunk(&mut r) {
            body.extend_from_slice(&c);
        }
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Sends a request and hangs up after `wait` without reading the answer.
pub fn send_and_hang_up(addr: SocketAddr, path: &str, body: &Value, wait: Duration) {
    let mut s = connect(addr);
    let b = body.to_string();
    s.write_all(head("POST", path, Some(b.len())).as_bytes())
        .unwrap();
    s.write_all(b.as_bytes()).unwrap();
    std::thread::sleep(wait);
    drop(s);
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, None)
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, Some(body.to_string().as_bytes()))
}

/// A server-sent-event stream being read.
pub struct Sse {
    r: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    buf: String,
    /// The non-SSE body when the status is not 200.
    pub body: Vec<u8>,
}

impl Sse {
    /// Sends a streaming request and reads the response head.
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> Sse {
        let mut s = connect(addr);
        let b = body.to_string();
        s.write_all(head("POST", path, Some(b.len())).as_bytes())
            .unwrap();
        s.write_all(b.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        let mut body = Vec::new();
        if status != 200 {
            if is_chunked(&headers) {
                while let Some(c) = read_chunk(&mut r) {
                    body.extend_from_slice(&c);
                }
            } else {
                let _ = r.read_to_end(&mut body);
            }
        }
        Sse {
            r,
            status,
            headers,
            buf: String::new(),
            body,
        }
    }

    /// The data of the next event (`[DONE]` included); `None` when the stream ends.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let ev: String = self.buf[..at].to_string();
                self.buf.drain(..at + 2);
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Some(data.join("\n"));
            }
            let c = read_chunk(&mut self.r)?;
            self.buf
                .push_str(&String::from_utf8(c).expect("SSE is UTF-8"));
        }
    }

    /// Every remaining event.
    pub fn collect(mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next_data() {
            out.push(d);
        }
        out
    }
}
