//! Events for the host: sent on every open control connection, and the agent's log.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use husk_protocol::{write_frame, Connection, Event, LogLevel, ServerMessage};

/// The writing half of a control connection, shared by the threads that answer calls
/// and by event publishers; the lock keeps frames whole.
pub type Writer = Arc<Mutex<Connection>>;

/// The control connections that get events.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Writer>>,
}

impl EventBus {
    pub fn subscribe(&self, writer: Writer) {
        self.lock().push(writer);
    }

    pub fn unsubscribe(&self, writer: &Writer) {
        self.lock().retain(|w| !Arc::ptr_eq(w, writer));
    }

    /// Sends `event` to every subscriber; one that cannot take it is dropped (its
    /// connection is gone or broken).
    pub fn publish(&self, event: Event) {
        let message = ServerMessage::Event(event);
        self.lock().retain(|writer| {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            write_frame(&mut *conn, &message).is_ok()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Writer>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The agent's bus, for the logger.
pub fn bus() -> &'static EventBus {
    static BUS: OnceLock<EventBus> = OnceLock::new();
    BUS.get_or_init(EventBus::default)
}

/// The agent's logger: each record goes to stderr (the guest console in a VM) and, as a
/// `Log` event, to the host.
struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let level = match record.level() {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug | log::Level::Trace => LogLevel::Debug,
        };
        // Not eprintln!: a console that cannot be written must not panic PID 1.
        let _ = writeln!(
            std::io::stderr().lock(),
            "husk-agent: {}: {message}",
            record.level().as_str().to_lowercase()
        );
        bus().publish(Event::Log { level, message });
    }

    fn flush(&self) {}
}

/// Installs the logger (`HUSK_AGENT_LOG=debug` for more).
pub fn init_logging() {
    let level = match std::env::var("HUSK_AGENT_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
