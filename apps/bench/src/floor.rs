//! `bench floor`: a reference server doing the least any SSE server must do, so that
//! `bench run` against it measures what the machine itself costs (the loopback TCP
//! stack, the wake-ups, the load generator) under the backend's own numbers.
//!
//! It speaks just enough of the backend's API for a broadcast scenario: `GET /readyz`,
//! `GET /api/events` (a 200 head and a first frame; the connection is then kept), and
//! `POST /api/publish` of a broadcast, answered 202 and then written to every stream
//! from plain loops, one `write` per stream, split over `--threads` threads. No async
//! runtime, no queues, no Redis, no tokens checked. Loopback only, like the rest.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{self, Sender},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Port on 127.0.0.1 (0: any free one; the chosen port is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Threads that write each broadcast, each to its share of the streams.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

type Shard = Arc<Mutex<Vec<TcpStream>>>;

pub fn main(args: FloorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))?;
    println!("floor server on http://{}", listener.local_addr()?);
    let shards: Vec<Shard> = (0..args.threads.max(1)).map(|_| Shard::default()).collect();
    let writers: Vec<Sender<Vec<u8>>> = shards
        .iter()
        .map(|shard| {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let shard = shard.clone();
            thread::spawn(move || {
                for frame in rx {
                    let mut streams = shard.lock().unwrap_or_else(PoisonError::into_inner);
                    streams.retain_mut(|stream| stream.write_all(&frame).is_ok());
                }
            });
            tx
        })
        .collect();

    let mut next_shard = 0;
    let mut published = 0_u64;
    for connection in listener.incoming() {
        let Ok(mut connection) = connection else {
            continue;
        };
        let Ok((head, body)) = read_request(&mut connection) else {
            continue;
        };
        if head.starts_with("GET /api/events") {
            let opened = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          connection: close\r\n\r\nretry: 2000\n\n\
                          event: stream.opened\ndata: {\"userId\":\"floor\",\
                          \"eventType\":\"stream.opened\",\"data\":{}}\n\n";
            if connection.write_all(opened.as_bytes()).is_ok() {
                let _ = connection.set_nodelay(true);
                shards[next_shard]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(connection);
                next_shard = (next_shard + 1) % shards.len();
            }
        } else if head.starts_with("POST /api/publish") {
            let broadcast = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|b| b["broadcast"] == true);
            if !broadcast {
                respond(&mut connection, "400 Bad Request", "{}");
                continue;
            }
            published += 1;
            let published_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            respond(
                &mut connection,
                "202 Accepted",
                &format!("{{\"id\":{published},\"epoch\":1}}"),
            );
            let frame = format!(
                "id: 0-0.1-{published}\nevent: bench.floor\ndata: {{\"id\":{published},\
                 \"epoch\":1,\"userId\":\"*\",\"eventType\":\"bench.floor\",\"data\":{{}},\
                 \"publishedAt\":{published_at}}}\n\n"
            );
            for writer in &writers {
                let _ = writer.send(frame.clone().into_bytes());
            }
        } else {
            respond(&mut connection, "200 OK", "{}");
        }
    }
    Ok(())
}

/// Reads one request: its head, and its body when it has a `content-length`.
fn read_request(connection: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut bytes = Vec::with_capacity(1024);
    let mut buf = [0; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = connection.read(&mut buf)?;
        if n == 0 || bytes.len() > 64 * 1024 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_string();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        let n = connection.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    Ok((head, bytes[head_end..head_end + length].to_vec()))
}

fn respond(connection: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        connection,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
}
