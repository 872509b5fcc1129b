//! A minimal HTTP/1.1 client for Server-Sent Events over a raw TCP connection: requests
//! written as bytes, the response head as it came, and the body's frames as they came
//! (de-chunked when the body is chunked). Two users need exactly that and nothing more:
//! the load generator, which must spend its CPU on measuring rather than on a general
//! HTTP client, and the backend's carrier tests, which compare what each carrier puts
//! on the wire byte for byte.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The longest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// One HTTP/1.1 connection, read by hand.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Read but not yet consumed.
    pending: Vec<u8>,
}

/// A response's status and headers (names in lowercase), in the order they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

impl Connection {
    /// Connects to `server`, from `local` (any port) if given, with `TCP_NODELAY`.
    pub async fn connect(server: SocketAddr, local: Option<IpAddr>) -> io::Result<Self> {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(local) = local {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            pending: Vec::with_capacity(1024),
        })
    }

    /// Writes `bytes` as they are: a request, or a piece of one.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes `GET target` with `headers` (each line ending in CRLF) and a Host header.
    pub async fn get(&mut self, target: &str, headers: &str) -> io::Result<()> {
        let request = get_request(target, headers);
        self.send(request.as_bytes()).await
    }

    /// Reads more bytes; false at end of input.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut buf = [0_u8; 4096];
        let n = self.stream.read(&mut buf).await?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// Reads the next response head.
    pub async fn head(&mut self) -> io::Result<Head> {
        let end = loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                break end;
            }
            if self.pending.len() > MAX_HEAD {
                return Err(io::Error::other("response head too long"));
            }
            if !self.fill().await? {
                return Err(io::Error::other(
                    "connection closed before the response head",
                ));
            }
        };
        let head: Vec<u8> = self.pending.drain(..end + 4).collect();
        parse_head(&String::from_utf8_lossy(&head[..end]))
    }

    /// The body of a response of known length (`content-length`).
    pub async fn sized_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        let len: usize = head
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("no content-length"))?;
        while self.pending.len() < len {
            if !self.fill().await? {
                return Err(io::Error::other("connection closed inside the body"));
            }
        }
        Ok(self.pending.drain(..len).collect())
    }

    /// The streaming body that follows `head`: its frames, as they come.
    pub fn into_body(self, head: &Head) -> Body {
        let mut body = Body {
            stream: self.stream,
            raw: Vec::with_capacity(1024),
            text: Vec::with_capacity(1024),
            chunked: head.is_chunked(),
            chunk: Chunk::Size,
            ended: false,
        };
        // The first frames may have come in with the head.
        body.take(&self.pending);
        body
    }
}

/// Opens a stream the way the load generator does: `GET path` on `server` from
/// `local`, with `token` as its bearer credential; fails unless the answer is a 200.
pub async fn open_stream(
    local: IpAddr,
    server: SocketAddr,
    path: &str,
    token: &str,
) -> io::Result<Body> {
    let mut connection = Connection::connect(server, Some(local)).await?;
    let headers = format!(
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\nAuthorization: Bearer {token}\r\n"
    );
    connection.get(path, &headers).await?;
    let head = connection.head().await?;
    if head.status != 200 {
        return Err(io::Error::other(format!("stream refused: {}", head.status)));
    }
    Ok(connection.into_body(&head))
}

/// A `GET` request's bytes.
pub fn get_request(target: &str, headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n")
}

fn parse_head(text: &str) -> io::Result<Head> {
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other("not an HTTP/1.x status line"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(Head { status, headers })
}

/// A streaming response body, split into SSE frames.
#[derive(Debug)]
pub struct Body {
    stream: TcpStream,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// The body so far, not yet split into frames.
    text: Vec<u8>,
    chunked: bool,
    chunk: Chunk,
    ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// This many bytes of chunk data still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    Trailer,
}

impl Body {
    /// The next frame, as it came (its fields and the blank line that ends it);
    /// `None` when the server ended the body.
    pub async fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.text, b"\n\n") {
                return Ok(Some(self.text.drain(..end + 2).collect()));
            }
            if self.ended {
                return Ok(None);
            }
            let mut buf = [0_u8; 8192];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                self.ended = true;
                continue;
            }
            self.take(&buf[..n]);
        }
    }

    /// The `data:` of the next frame that has one (comments and `retry:` are skipped);
    /// `None` when the server ended the stream.
    pub async fn next_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        while let Some(frame) = self.next_frame().await? {
            if let Some(data) = data_of(&frame) {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// Adds bytes read off the socket to the body, de-chunking them if need be.
    fn take(&mut self, bytes: &[u8]) {
        if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk();
        } else {
            self.text.extend_from_slice(bytes);
        }
    }

    /// Moves whole chunks' data from `raw` to `text`. A malformed chunk size ends the
    /// body: what follows cannot be framed.
    fn dechunk(&mut self) {
        let mut at = 0;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(line_end) = find(&self.raw[at..], b"\r\n") else {
                        break;
                    };
                    let size = std::str::from_utf8(&self.raw[at..at + line_end])
                        .ok()
                        .and_then(|line| {
                            usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()
                        });
                    at += line_end + 2;
                    match size {
                        Some(0) | None => {
                            self.ended = true;
                            break;
                        }
                        Some(size) => self.chunk = Chunk::Data(size),
                    }
                }
                Chunk::Data(left) => {
                    let take = left.min(self.raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    self.text.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    self.chunk = if take == left {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::Trailer => {
                    if self.raw.len() - at < 2 {
                        break;
                    }
                    at += 2;
                    self.chunk = Chunk::Size;
                }
            }
        }
        self.raw.drain(..at);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One SSE frame's fields: an event, a bare `retry:`, or a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub id: Option<String>,
    pub event: Option<String>,
    /// Every `data:` line, joined with line breaks.
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl Fields {
    /// Reads the fields of one frame (its lines, with or without the blank line that
    /// ends it), as a browser's EventSource would.
    pub fn parse(frame: &str) -> Self {
        let mut fields = Self::default();
        for line in frame.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                fields.comment = Some(comment.trim().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => fields.id = Some(value.to_string()),
                "event" => fields.event = Some(value.to_string()),
                "data" => {
                    let data = fields.data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                "retry" => fields.retry = value.parse().ok(),
                _ => {}
            }
        }
        fields
    }
}

/// The (joined) `data:` lines of one frame; `None` for a frame without any. The load
/// generator's fast path: bytes in, bytes out, no UTF-8 check.
pub fn data_of(frame: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in frame.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let data = data.get_or_insert_with(Vec::new);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_yield_their_data_only() {
        assert_eq!(data_of(b": keep-alive\n\n"), None);
        assert_eq!(data_of(b"retry: 2000\n\n"), None);
        assert_eq!(
            data_of(b"id: 1\nevent: a.b\ndata: {\"x\":1}\n\n"),
            Some(b"{\"x\":1}".to_vec())
        );
        assert_eq!(data_of(b"data: a\ndata: b\n\n"), Some(b"a\nb".to_vec()));
    }

    #[test]
    fn fields_are_read_as_an_event_source_reads_them() {
        let fields = Fields::parse("id: 7\nevent: a.b\ndata: x\ndata:y\nretry: 5\n\n");
        assert_eq!(fields.id.as_deref(), Some("7"));
        assert_eq!(fields.event.as_deref(), Some("a.b"));
        assert_eq!(fields.data.as_deref(), Some("x\ny"));
        assert_eq!(fields.retry, Some(5));
        assert_eq!(
            Fields::parse(": keep-alive\n\n").comment.as_deref(),
            Some("keep-alive")
        );
    }

    #[test]
    fn heads_parse_with_lowercase_names() {
        let head = parse_head("HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\nX-A: b: c")
            .expect("a head");
        assert_eq!(head.status, 401);
        assert_eq!(head.get("content-length"), Some("3"));
        assert_eq!(head.get("x-a"), Some("b: c"));
        assert!(parse_head("SSH-2.0").is_err());
    }

    #[tokio::test]
    async fn decodes_a_chunked_stream_split_anywhere() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0_u8; 1024];
            let _ = socket.read(&mut request).await;
            let body = "retry: 5\n\ndata: one\n\n: c\n\nid: 2\ndata: two\n\n";
            let mut response = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for piece in [&body[..7], &body[7..25], &body[25..]] {
                response.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
            }
            response.push_str("0\r\n\r\n");
            // Written in small pieces, so chunk boundaries fall mid-line.
            for piece in response.as_bytes().chunks(5) {
                socket.write_all(piece).await.expect("write");
                socket.flush().await.expect("flush");
            }
        });
        let local = "127.0.0.1".parse().expect("ip");
        let mut body = open_stream(local, address, "/", "t")
            .await
            .expect("connect");
        assert_eq!(
            body.next_frame().await.expect("read"),
            Some(b"retry: 5\n\n".to_vec())
        );
        assert_eq!(body.next_data().await.expect("read"), Some(b"one".to_vec()));
        assert_eq!(body.next_data().await.expect("read"), Some(b"two".to_vec()));
        assert_eq!(body.next_data().await.expect("read"), None);
        server.await.expect("server");
    }
}
