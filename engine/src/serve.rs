//! `neoscope serve`: the engine in its own process, speaking the protocol over TCP (bound to
//! 127.0.0.1 by default) to any number of clients. Each client presents the server's token in
//! its first frame; frames are bounded in size ([`neoscope_api::wire::MAX_FRAME`]); a client
//! with a wrong token or a malformed frame gets an error frame and is disconnected while the
//! engine keeps serving the others. Jobs from all clients run one at a time on one engine (one
//! model in memory); request ids are each client's own and are mapped to engine ids here.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neoscope_api::wire::{self, ClientFrame, Hello, ServerFrame, WIRE_VERSION, Welcome};
use neoscope_api::{ApiError, Command, ErrorKind, Event, RequestId};

use crate::error::{EngineError, Result};
use crate::worker::{EngineOptions, start_engine};

/// How long a new connection may take to present its token.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's outgoing frames.
type Outbox = Sender<ServerFrame>;

/// Which client request an engine request belongs to.
#[derive(Default)]
struct Routes {
    next_conn: u64,
    conns: HashMap<u64, Outbox>,
    /// engine id → (connection, the client's id).
    jobs: HashMap<RequestId, (u64, RequestId)>,
}

struct Shared {
    token: String,
    device: String,
    commands: Mutex<Sender<(RequestId, Command)>>,
    cancel: Arc<AtomicU64>,
    next_id: AtomicU64,
    routes: Mutex<Routes>,
}

/// A token for a new server: 128 random bits in hex.
pub fn new_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..4)
        .map(|_| format!("{:08x}", rng.random::<u32>()))
        .collect()
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Starts the engine, binds `listen` and serves until the process ends; `ready` is told the
/// bound address (useful with port 0) before the first connection is accepted.
pub fn serve(
    opts: EngineOptions,
    listen: &str,
    token: &str,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if token.is_empty() {
        return Err(EngineError::Invalid(
            "the server token must not be empty".into(),
        ));
    }
    let listener = TcpListener::bind(listen)
        .map_err(|e| EngineError::Invalid(format!("could not listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| EngineError::Invalid(format!("{listen}: {e}")))?;
    let engine = start_engine(opts, Arc::new(|| {}))?;
    let shared = Arc::new(Shared {
        token: token.to_owned(),
        device: engine.device.clone(),
        commands: Mutex::new(engine.commands),
        cancel: engine.cancel,
        next_id: AtomicU64::new(1),
        routes: Mutex::new(Routes::default()),
    });
    let events = engine.events;
    let s = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("neoscope-serve-events".into())
        .spawn(move || dispatch(&events, &s))
        .map_err(|e| EngineError::Invalid(format!("could not start the server: {e}")))?;
    ready(addr);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let s = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("neoscope-serve-conn".into())
            .spawn(move || connection(stream, &s));
    }
    Ok(())
}

/// Sends each engine event to the connection whose request it answers, under the client's id.
fn dispatch(events: &Receiver<Event>, shared: &Shared) {
    while let Ok(ev) = events.recv() {
        let Some(engine_id) = ev.request_id() else {
            continue;
        };
        let Ok(mut routes) = shared.routes.lock() else {
            return;
        };
        let done = matches!(ev, Event::Finished { .. } | Event::Failed { .. });
        let route = if done {
            routes.jobs.remove(&engine_id)
        } else {
            routes.jobs.get(&engine_id).copied()
        };
        if let Some((conn, client_id)) = route
            && let Some(out) = routes.conns.get(&conn)
        {
            let _ = out.send(ServerFrame::Event(ev.with_id(client_id)));
        }
    }
}

fn refuse(stream: &mut TcpStream, error: ApiError) {
    let _ = wire::write_frame(stream, &ServerFrame::Error(error));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// One client: handshake, then its frames until it disconnects or sends a bad one.
fn connection(mut stream: TcpStream, shared: &Shared) {
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).ok();
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let hello = match wire::read_frame::<Hello>(&mut reader) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => return refuse(&mut stream, e),
    };
    if !same_token(&hello.token, &shared.token) {
        return refuse(
            &mut stream,
            ApiError::new(ErrorKind::Protocol, "refused: wrong engine token"),
        );
    }
    if hello.version != WIRE_VERSION {
        return refuse(
            &mut stream,
            ApiError::new(
                ErrorKind::Protocol,
                format!(
                    "refused: this engine speaks protocol version {WIRE_VERSION}, the client {}",
                    hello.version
                ),
            ),
        );
    }
    let welcome = Welcome {
        version: WIRE_VERSION,
        device: shared.device.clone(),
    };
    if wire::write_frame(&mut stream, &welcome).is_err() {
        return;
    }
    stream.set_read_timeout(None).ok();
    let (out_tx, out_rx) = channel::<ServerFrame>();
    let conn = {
        let Ok(mut r) = shared.routes.lock() else {
            return;
        };
        r.next_conn += 1;
        let c = r.next_conn;
        r.conns.insert(c, out_tx.clone());
        c
    };
    let Ok(mut write_half) = stream.try_clone() else {
        return;
    };
    let writer = std::thread::spawn(move || {
        while let Ok(frame) = out_rx.recv() {
            let last = matches!(frame, ServerFrame::Error(_));
            if wire::write_frame(&mut write_half, &frame).is_err() || last {
                let _ = write_half.shutdown(std::net::Shutdown::Both);
                break;
            }
        }
    });
    loop {
        match wire::read_frame::<ClientFrame>(&mut reader) {
            Ok(Some(ClientFrame::Run { id, command })) => {
                let engine_id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut r) = shared.routes.lock() {
                    r.jobs.insert(engine_id, (conn, id));
                }
                let sent = shared
                    .commands
                    .lock()
                    .is_ok_and(|tx| tx.send((engine_id, *command)).is_ok());
                if !sent {
                    let _ = out_tx.send(ServerFrame::Error(ApiError::new(
                        ErrorKind::Internal,
                        "the engine has stopped",
                    )));
                    break;
                }
            }
            Ok(Some(ClientFrame::Cancel { id })) => {
                let engine_id = shared.routes.lock().ok().and_then(|r| {
                    r.jobs
                        .iter()
                        .find(|(_, v)| **v == (conn, id))
                        .map(|(k, _)| *k)
                });
                if let Some(e) = engine_id {
                    shared.cancel.store(e, Ordering::SeqCst);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = out_tx.send(ServerFrame::Error(e));
                break;
            }
        }
    }
    // The client is gone: stop its running job and forget its routes.
    if let Ok(mut r) = shared.routes.lock() {
        r.conns.remove(&conn);
        let mine: Vec<RequestId> = r
            .jobs
            .iter()
            .filter(|(_, (c, _))| *c == conn)
            .map(|(k, _)| *k)
            .collect();
        for e in mine {
            r.jobs.remove(&e);
            shared.cancel.store(e, Ordering::SeqCst);
        }
    }
    drop(out_tx);
    let _ = writer.join();
}
