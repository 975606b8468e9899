//! The front end's side of the engine: [`EngineHandle`] runs the engine on a thread of this
//! process, or talks to an engine in another process (`neoscope serve`) over a local socket.
//! Both speak the same protocol and look the same to the app and the CLI.

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neoscope_api::wire::{self, ClientFrame, Hello, ServerFrame, WIRE_VERSION, Welcome};
use neoscope_api::{ApiError, Command, ErrorKind, Event, Reply, RequestId};

use super::job::{CANCEL_ALL, Job};
use super::{EngineOptions, Waker, Worker, select_device};
use crate::error::{EngineError, Result};

/// A started engine thread: where commands go, the cancel flag, where events come from.
pub(crate) struct Started {
    pub(crate) commands: Sender<(RequestId, Command)>,
    pub(crate) cancel: Arc<AtomicU64>,
    pub(crate) events: Receiver<Event>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) device: String,
}

/// Starts the engine thread and waits for its handshake.
pub(crate) fn start_engine(opts: EngineOptions, waker: Waker) -> Result<Started> {
    let (commands, cmd_rx) = channel::<(RequestId, Command)>();
    let (ev_tx, events) = channel::<Event>();
    let cancel = Arc::new(AtomicU64::new(0));
    let cancel2 = Arc::clone(&cancel);
    let thread = std::thread::Builder::new()
        .name("neoscope-engine".into())
        .spawn(move || {
            let dev = match select_device(opts.device) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ev_tx.send(Event::Failed {
                        id: 0,
                        error: ApiError::from(&e),
                    });
                    return;
                }
            };
            let device = crate::model::load::device_name(&dev);
            let mut w = Worker::new(opts, dev);
            let _ = ev_tx.send(Event::Ready { device });
            waker();
            while let Ok((id, cmd)) = cmd_rx.recv() {
                let job = Job::new(id, ev_tx.clone(), Arc::clone(&waker), Arc::clone(&cancel2));
                w.run(&job, cmd);
            }
        })
        .map_err(|e| EngineError::Invalid(format!("could not start the engine thread: {e}")))?;
    match events.recv() {
        Ok(Event::Ready { device }) => Ok(Started {
            commands,
            cancel,
            events,
            thread,
            device,
        }),
        Ok(Event::Failed { error, .. }) => Err(EngineError::Api(error)),
        _ => Err(EngineError::Invalid(
            "the engine thread stopped during startup".into(),
        )),
    }
}

/// Where the commands go.
enum Link {
    /// An engine thread of this process.
    Local {
        tx: Sender<(RequestId, Command)>,
        cancel: Arc<AtomicU64>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    /// An engine in another process.
    Remote {
        writer: Mutex<TcpStream>,
        reader: Option<std::thread::JoinHandle<()>>,
    },
}

/// The front end's side of the engine.
pub struct EngineHandle {
    link: Link,
    rx: Receiver<Event>,
    next_id: RequestId,
    /// Device in words, from the handshake.
    pub device: String,
}

impl EngineHandle {
    /// Starts the engine thread and waits for its handshake.
    pub fn spawn(opts: EngineOptions, waker: Waker) -> Result<Self> {
        let e = start_engine(opts, waker)?;
        Ok(Self {
            link: Link::Local {
                tx: e.commands,
                cancel: e.cancel,
                thread: Some(e.thread),
            },
            rx: e.events,
            next_id: 1,
            device: e.device,
        })
    }

    /// Connects to an engine served by `neoscope serve` at `address` (host:port), presenting
    /// `token`.
    pub fn connect(address: &str, token: &str, waker: Waker) -> Result<Self> {
        let refused = |m: String| EngineError::Api(ApiError::new(ErrorKind::Protocol, m));
        let stream = TcpStream::connect(address)
            .map_err(|e| refused(format!("could not reach the engine at {address}: {e}")))?;
        stream.set_nodelay(true).ok();
        let mut writer = stream
            .try_clone()
            .map_err(|e| refused(format!("engine connection: {e}")))?;
        let mut reader = BufReader::new(stream);
        wire::write_frame(
            &mut writer,
            &Hello {
                version: WIRE_VERSION,
                token: token.to_owned(),
            },
        )?;
        // The handshake gets a deadline; events afterwards may take as long as jobs do.
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok();
        let welcome = match wire::read_frame::<serde_json::Value>(&mut reader)? {
            Some(v) => match serde_json::from_value::<ServerFrame>(v.clone()) {
                Ok(ServerFrame::Error(e)) => return Err(EngineError::Api(e)),
                _ => serde_json::from_value::<Welcome>(v)
                    .map_err(|e| refused(format!("unexpected handshake from {address}: {e}")))?,
            },
            None => {
                return Err(refused(format!(
                    "the engine at {address} closed the connection"
                )));
            }
        };
        if welcome.version != WIRE_VERSION {
            return Err(refused(format!(
                "the engine at {address} speaks protocol version {}, this client {WIRE_VERSION}",
                welcome.version
            )));
        }
        reader.get_ref().set_read_timeout(None).ok();
        let (ev_tx, rx) = channel::<Event>();
        let thread = std::thread::Builder::new()
            .name("neoscope-engine-link".into())
            .spawn(move || remote_reader(reader, &ev_tx, &waker))
            .map_err(|e| refused(format!("could not start the reader thread: {e}")))?;
        Ok(Self {
            link: Link::Remote {
                writer: Mutex::new(writer),
                reader: Some(thread),
            },
            rx,
            next_id: 1,
            device: welcome.device,
        })
    }

    /// Queues a command; returns its request id.
    pub fn send(&mut self, cmd: impl Into<Command>) -> RequestId {
        let cmd = cmd.into();
        let id = self.next_id;
        self.next_id += 1;
        match &self.link {
            // A closed channel means the engine thread ended; `try_recv` then reports it.
            Link::Local { tx, .. } => {
                let _ = tx.send((id, cmd));
            }
            Link::Remote { writer, .. } => {
                let frame = ClientFrame::Run {
                    id,
                    command: Box::new(cmd),
                };
                if let Ok(mut w) = writer.lock() {
                    // A broken connection ends the reader thread, which reports it.
                    let _ = wire::write_frame(&mut *w, &frame);
                }
            }
        }
        id
    }

    /// Asks the engine to stop request `id` (running or queued).
    pub fn cancel(&self, id: RequestId) {
        match &self.link {
            Link::Local { cancel, .. } => cancel.store(id, Ordering::SeqCst),
            Link::Remote { writer, .. } => {
                if let Ok(mut w) = writer.lock() {
                    let _ = wire::write_frame(&mut *w, &ClientFrame::Cancel { id });
                }
            }
        }
    }

    /// The next waiting event, if any.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Sends `cmd` and waits for its result, passing every other event to `on_event`.
    /// The result is asked for by type (`JobResult`, or one analysis's result type); a reply of
    /// another type is an error.
    pub fn call<R: Reply>(
        &mut self,
        cmd: impl Into<Command>,
        on_event: &mut dyn FnMut(&Event),
    ) -> std::result::Result<R, ApiError> {
        let id = self.send(cmd);
        while let Some(ev) = self.recv() {
            match ev {
                Event::Finished { id: i, result } if i == id => {
                    return R::from_result(result).ok_or_else(|| {
                        ApiError::new(ErrorKind::Internal, "unexpected reply from the engine")
                    });
                }
                Event::Failed { id: i, error } if i == id => return Err(error),
                other => on_event(&other),
            }
        }
        Err(ApiError::new(ErrorKind::Internal, "the engine stopped"))
    }
}

/// Reads the server's frames into the event channel until the connection ends; a broken
/// connection fails every request still waiting (id 0 names none in particular).
fn remote_reader(mut reader: BufReader<TcpStream>, events: &Sender<Event>, waker: &Waker) {
    loop {
        let ev = match wire::read_frame::<ServerFrame>(&mut reader) {
            Ok(Some(ServerFrame::Event(ev))) => ev,
            Ok(Some(ServerFrame::Error(error))) => Event::Failed { id: 0, error },
            Ok(None) => break,
            Err(error) => Event::Failed { id: 0, error },
        };
        let last = matches!(ev, Event::Failed { id: 0, .. });
        if events.send(ev).is_err() {
            break;
        }
        waker();
        if last {
            break;
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        match &mut self.link {
            Link::Local { tx, cancel, thread } => {
                // Closing the command channel ends the worker loop after the current job.
                let (dead_tx, _) = channel();
                drop(std::mem::replace(tx, dead_tx));
                cancel.store(CANCEL_ALL, Ordering::SeqCst);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Link::Remote { writer, reader } => {
                if let Ok(w) = writer.get_mut() {
                    let _ = w.shutdown(std::net::Shutdown::Both);
                }
                if let Some(t) = reader.take() {
                    let _ = t.join();
                }
            }
        }
    }
}
