//! A minimal Server-Sent Events client over a raw TCP connection: HTTP/1.1, chunked
//! transfer decoding, frame splitting. Lighter than a general HTTP client, so that the
//! load generator spends its CPU on measuring rather than on itself.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

#[derive(Debug)]
pub struct SseConnection {
    stream: TcpStream,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// The response body so far, not yet split into frames.
    body: Vec<u8>,
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

/// Opens `GET path` on `server` from the local address `local`, with `token` as its
/// bearer credential, and checks for a 200.
pub async fn connect(
    local: IpAddr,
    server: SocketAddr,
    path: &str,
    token: &str,
) -> io::Result<SseConnection> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

    let mut raw = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        if raw.len() > 16 * 1024 {
            return Err(io::Error::other("response head too long"));
        }
        let mut buf = [0_u8; 1024];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::other(
                "connection closed before the response head",
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let status = head.lines().next().unwrap_or_default().to_string();
        return Err(io::Error::other(format!("stream refused: {status}")));
    }
    let chunked = head.contains("transfer-encoding: chunked");
    raw.drain(..head_end + 4);
    let mut connection = SseConnection {
        stream,
        raw: Vec::with_capacity(1024),
        body: Vec::with_capacity(1024),
        chunked,
        chunk: Chunk::Size,
        ended: false,
    };
    // The first frames may have come in with the head.
    connection.take(&raw)?;
    Ok(connection)
}

impl SseConnection {
    /// The `data:` of the next frame that has one (comments and `retry:` are skipped);
    /// `None` when the server ended the stream.
    pub async fn next_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            while let Some(end) = find(&self.body, b"\n\n") {
                let frame: Vec<u8> = self.body.drain(..end + 2).collect();
                if let Some(data) = data_of(&frame) {
                    return Ok(Some(data));
                }
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
            self.take(&buf[..n])?;
        }
    }

    /// Adds bytes read off the socket to the body, de-chunking them if need be.
    fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk()
        } else {
            self.body.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn dechunk(&mut self) -> io::Result<()> {
        let mut at = 0;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(line_end) = find(&self.raw[at..], b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + line_end])
                        .map_err(|_| io::Error::other("bad chunk size"))?;
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                    at += line_end + 2;
                    if size == 0 {
                        self.ended = true;
                        break;
                    }
                    self.chunk = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let take = left.min(self.raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    self.body.extend_from_slice(&self.raw[at..at + take]);
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
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The (joined) `data:` lines of one frame.
fn data_of(frame: &[u8]) -> Option<Vec<u8>> {
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
        let mut connection = connect("127.0.0.1".parse().expect("ip"), address, "/", "t")
            .await
            .expect("connect");
        assert_eq!(
            connection.next_data().await.expect("read"),
            Some(b"one".to_vec())
        );
        assert_eq!(
            connection.next_data().await.expect("read"),
            Some(b"two".to_vec())
        );
        assert_eq!(connection.next_data().await.expect("read"), None);
        server.await.expect("server");
    }
}
