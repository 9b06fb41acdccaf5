//! Serving the protocol: one thread per connection, one per call on a control
//! connection (so a `Wait` never holds up other calls).

use std::sync::{Arc, Mutex};

use husk_protocol::{
    read_frame, write_frame, AgentError, AgentInfo, Connection, ErrorKind, FrameError, Hello,
    HelloReply, Listener, Request, ServerMessage, PROTOCOL_VERSION,
};

use crate::events::Writer;
use crate::sandbox::Sandbox;

/// Accepts connections for ever; an accept error is logged and the loop goes on.
pub fn serve(listener: Listener, sandbox: Arc<Sandbox>) -> ! {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let sandbox = sandbox.clone();
                let spawned = std::thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || connection(conn, &sandbox));
                if let Err(e) = spawned {
                    log::error!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                log::error!("accepting a connection: {e}");
                // EMFILE and the like persist for a while; do not spin on them.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

fn connection(mut conn: Connection, sandbox: &Arc<Sandbox>) {
    let hello: Hello = match read_frame(&mut conn) {
        Ok(hello) => hello,
        Err(FrameError::Closed) => return,
        Err(e) => {
            log::warn!("a connection's hello: {e}");
            reply_hello(
                &mut conn,
                Err(AgentError::new(ErrorKind::BadRequest, e.to_string())),
            );
            return;
        }
    };
    if hello.version() != PROTOCOL_VERSION {
        let message = format!(
            "the host speaks protocol version {}, this agent version {PROTOCOL_VERSION}",
            hello.version()
        );
        log::warn!("{message}");
        reply_hello(
            &mut conn,
            Err(AgentError::new(ErrorKind::VersionMismatch, message)),
        );
        return;
    }
    let info = AgentInfo {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        cgroups_unavailable: sandbox.cgroups_unavailable().map(str::to_owned),
    };
    if !reply_hello(&mut conn, Ok(info)) {
        return;
    }
    match hello {
        Hello::Control { .. } => control(conn, sandbox),
        Hello::Stream {
            container_id,
            exec_id,
            stream,
            ..
        } => sandbox.streams.add(container_id, exec_id, stream, conn),
    }
}

fn reply_hello(conn: &mut Connection, result: Result<AgentInfo, AgentError>) -> bool {
    match write_frame(conn, &HelloReply { result }) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("answering a hello: {e}");
            false
        }
    }
}

/// Reads requests until the host closes the connection.
fn control(conn: Connection, sandbox: &Arc<Sandbox>) {
    let writer: Writer = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            log::error!("cannot share a control connection: {e}");
            return;
        }
    };
    sandbox.events().subscribe(writer.clone());
    let mut reader = conn;
    loop {
        match read_frame::<serde_json::Value>(&mut reader) {
            Ok(value) => dispatch(value, sandbox, &writer),
            Err(FrameError::Closed) => break,
            Err(FrameError::Malformed(e)) => {
                respond(
                    &writer,
                    0,
                    Err(AgentError::new(ErrorKind::BadRequest, e.to_string())),
                );
            }
            Err(FrameError::TooLarge(len)) => {
                // The frame's bytes cannot be skipped safely: the connection is lost.
                respond(
                    &writer,
                    0,
                    Err(AgentError::new(
                        ErrorKind::BadRequest,
                        format!("a frame of {len} bytes is over the 4 MiB limit; closing"),
                    )),
                );
                break;
            }
            Err(e) => {
                log::warn!("control connection: {e}");
                break;
            }
        }
    }
    sandbox.events().unsubscribe(&writer);
}

/// Decodes one request and serves it on its own thread.
fn dispatch(value: serde_json::Value, sandbox: &Arc<Sandbox>, writer: &Writer) {
    // The id first, so even a request with a bad call gets its answer.
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let request: Request = match serde_json::from_value(value) {
        Ok(request) => request,
        Err(e) => {
            respond(
                writer,
                id,
                Err(AgentError::new(ErrorKind::BadRequest, e.to_string())),
            );
            return;
        }
    };
    let sandbox = sandbox.clone();
    let for_call = writer.clone();
    let spawned = std::thread::Builder::new()
        .name("call".into())
        .spawn(move || {
            let result = sandbox.handle(request.call);
            respond(&for_call, request.id, result);
        });
    if let Err(e) = spawned {
        let message = format!("no thread for the call: {e}");
        respond(writer, id, Err(AgentError::new(ErrorKind::Failed, message)));
    }
}

fn respond(writer: &Writer, id: u64, result: Result<husk_protocol::Reply, AgentError>) {
    let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = write_frame(&mut *conn, &ServerMessage::Response { id, result }) {
        log::warn!("answering call {id}: {e}");
    }
}
