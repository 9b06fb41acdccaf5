//! A small stderr logger: `husk: <message>` for info and up; `HUSK_LOG=debug` for more.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            Level::Error => eprintln!("husk: error: {}", record.args()),
            Level::Warn => eprintln!("husk: warning: {}", record.args()),
            Level::Info => eprintln!("husk: {}", record.args()),
            Level::Debug | Level::Trace => {
                eprintln!("husk: [{}] {}", record.target(), record.args())
            }
        }
    }

    fn flush(&self) {}
}

pub fn init() {
    let level = match std::env::var("HUSK_LOG").as_deref() {
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        Ok("warn") => LevelFilter::Warn,
        Ok("error") => LevelFilter::Error,
        Ok("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    static LOGGER: std::sync::OnceLock<StderrLogger> = std::sync::OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger { level });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}
