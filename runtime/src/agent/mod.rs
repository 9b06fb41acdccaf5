//! The typed client of the guest agent (`husk-protocol`).
//!
//! One [`AgentClient`] holds the control connection: calls from any thread are written
//! under a lock with a fresh id, and a reader thread hands each response to the call
//! that waits for it and each event to the subscribers. Stdio streams are separate
//! connections opened with [`AgentClient::open_stream`] before the call that uses them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use husk_protocol::{
    read_frame, write_frame, AgentError, AgentInfo, Call, Connection, Connector, ContainerStats,
    CreateContainer, Event, ExecProcess, ExitInfo, FrameError, Hello, HelloReply, Reply, Request,
    SandboxConfig, ServerMessage, StreamKind, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ClientError {
    /// cannot connect to the agent: {0}
    Connect(std::io::Error),
    /// the agent refused the connection: {0}
    Refused(AgentError),
    /// talking to the agent failed: {0}
    Frame(#[from] FrameError),
    /// {0}
    Agent(#[from] AgentError),
    /// the connection to the agent was lost
    Disconnected,
    /// the agent answered {0:?} to a call that expects something else
    UnexpectedReply(Box<Reply>),
}

/// Calls waiting for their answer; `None` once the connection is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, Sender<Result<Reply, AgentError>>>>>>;
type Subscribers = Arc<Mutex<Vec<Sender<Event>>>>;

pub struct AgentClient {
    connector: Arc<dyn Connector>,
    writer: Mutex<Connection>,
    pending: Pending,
    subscribers: Subscribers,
    next_id: AtomicU64,
    info: AgentInfo,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a connection and says hello.
fn open(connector: &dyn Connector, hello: &Hello) -> Result<(Connection, AgentInfo), ClientError> {
    let mut conn = connector.connect().map_err(ClientError::Connect)?;
    write_frame(&mut conn, hello)?;
    let reply: HelloReply = read_frame(&mut conn)?;
    let info = reply.result.map_err(ClientError::Refused)?;
    Ok((conn, info))
}

impl AgentClient {
    /// Opens the control connection.
    pub fn connect(connector: Arc<dyn Connector>) -> Result<AgentClient, ClientError> {
        let hello = Hello::Control {
            version: PROTOCOL_VERSION,
        };
        let (conn, info) = open(connector.as_ref(), &hello)?;
        let reader = conn.try_clone().map_err(ClientError::Connect)?;
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let subscribers: Subscribers = Arc::default();
        let (for_reader, subs) = (pending.clone(), subscribers.clone());
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(reader, &for_reader, &subs))
            .map_err(ClientError::Connect)?;
        Ok(AgentClient {
            connector,
            writer: Mutex::new(conn),
            pending,
            subscribers,
            next_id: AtomicU64::new(1),
            info,
        })
    }

    /// What the agent said about itself.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// Events from now on (process exits, OOM kills, the agent's log).
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    /// Opens one stdio stream of a process that the next create or exec will start.
    pub fn open_stream(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StreamKind,
    ) -> Result<Connection, ClientError> {
        let hello = Hello::Stream {
            version: PROTOCOL_VERSION,
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        };
        open(self.connector.as_ref(), &hello).map(|(conn, _)| conn)
    }

    /// Makes a call and waits for its answer.
    pub fn call(&self, call: Call) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match lock(&self.pending).as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(ClientError::Disconnected),
        };
        let written = write_frame(&mut *lock(&self.writer), &Request { id, call });
        if let Err(e) = written {
            if let Some(pending) = lock(&self.pending).as_mut() {
                pending.remove(&id);
            }
            return Err(e.into());
        }
        match rx.recv() {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    fn expect_done(&self, call: Call) -> Result<(), ClientError> {
        match self.call(call)? {
            Reply::Done => Ok(()),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    fn expect_pid(&self, call: Call) -> Result<i32, ClientError> {
        match self.call(call)? {
            Reply::Process { pid } => Ok(pid),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        match self.call(Call::Ping)? {
            Reply::Pong => Ok(()),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    pub fn configure_sandbox(&self, config: SandboxConfig) -> Result<(), ClientError> {
        self.expect_done(Call::ConfigureSandbox(config))
    }

    /// Creates a container; returns its process's pid (in the agent's view).
    pub fn create_container(&self, create: CreateContainer) -> Result<i32, ClientError> {
        self.expect_pid(Call::CreateContainer(Box::new(create)))
    }

    pub fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.expect_done(Call::StartContainer {
            container_id: container_id.to_owned(),
        })
    }

    pub fn exec(&self, exec: ExecProcess) -> Result<i32, ClientError> {
        self.expect_pid(Call::Exec(Box::new(exec)))
    }

    pub fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.expect_done(Call::Signal {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            signal,
            all,
        })
    }

    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<ExitInfo, ClientError> {
        match self.call(Call::Wait {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        })? {
            Reply::Exited(info) => Ok(info),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    pub fn close_stdin(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<(), ClientError> {
        self.expect_done(Call::CloseStdin {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        })
    }

    pub fn resize_terminal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        self.expect_done(Call::ResizeTerminal {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            rows,
            cols,
        })
    }

    pub fn stats(&self, container_id: &str) -> Result<ContainerStats, ClientError> {
        match self.call(Call::Stats {
            container_id: container_id.to_owned(),
        })? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// Applies new resource limits (an OCI `LinuxResources` object) to a container.
    pub fn update_resources(
        &self,
        container_id: &str,
        resources: serde_json::Value,
    ) -> Result<(), ClientError> {
        self.expect_done(Call::UpdateResources {
            container_id: container_id.to_owned(),
            resources,
        })
    }

    pub fn pids(&self, container_id: &str) -> Result<Vec<i32>, ClientError> {
        match self.call(Call::Pids {
            container_id: container_id.to_owned(),
        })? {
            Reply::Pids { pids } => Ok(pids),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<(), ClientError> {
        self.expect_done(Call::RemoveContainer {
            container_id: container_id.to_owned(),
            force,
        })
    }

    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.expect_done(Call::Shutdown)
    }
}

/// Hands responses to their calls and events to subscribers until the connection ends;
/// then every call still waiting learns that the agent is gone.
fn read_loop(mut reader: Connection, pending: &Pending, subscribers: &Subscribers) {
    loop {
        match read_frame::<ServerMessage>(&mut reader) {
            Ok(ServerMessage::Response { id, result }) => {
                let waiter = lock(pending).as_mut().and_then(|p| p.remove(&id));
                if let Some(tx) = waiter {
                    let _ = tx.send(result);
                } else {
                    log::warn!(
                        "agent: a response to call {id}, which nobody waits for: {result:?}"
                    );
                }
            }
            Ok(ServerMessage::Event(event)) => {
                if let Event::Log { level, message } = &event {
                    log::debug!("agent {level:?}: {message}");
                }
                lock(subscribers).retain(|tx| tx.send(event.clone()).is_ok());
            }
            Err(e) => {
                if !matches!(e, FrameError::Closed) {
                    log::warn!("agent connection: {e}");
                }
                break;
            }
        }
    }
    // Dropping the senders wakes every waiting call with `Disconnected`; later calls
    // see `None`.
    lock(pending).take();
    lock(subscribers).clear();
}
