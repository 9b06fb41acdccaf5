//! husk's own log: `husk: <message>` lines on stderr for info and up (`HUSK_LOG=debug` for
//! more), or, with `--log FILE`, lines appended to that file in runc's formats: text, or
//! one JSON object per line (`{"level":…,"msg":…,"time":…}`) with `--log-format json`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

struct Logger {
    level: LevelFilter,
    format: LogFormat,
    /// `None`: stderr.
    file: Option<Mutex<File>>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match self.format {
            LogFormat::Text => match record.level() {
                Level::Error => format!("husk: error: {}\n", record.args()),
                Level::Warn => format!("husk: warning: {}\n", record.args()),
                Level::Info => format!("husk: {}\n", record.args()),
                Level::Debug | Level::Trace => {
                    format!("husk: [{}] {}\n", record.target(), record.args())
                }
            },
            LogFormat::Json => {
                let entry = serde_json::json!({
                    "level": record.level().as_str().to_lowercase(),
                    "msg": record.args().to_string(),
                    "time": crate::state::now_rfc3339(),
                });
                format!("{entry}\n")
            }
        };
        match &self.file {
            Some(file) => {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                let _ = file.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; the first call wins.
pub fn init(file: Option<&Path>, format: LogFormat) -> Result<(), String> {
    let level = match std::env::var("HUSK_LOG").as_deref() {
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        Ok("warn") => LevelFilter::Warn,
        Ok("error") => LevelFilter::Error,
        Ok("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    let file = match file {
        Some(path) => Some(Mutex::new(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log {}: {e}", path.display()))?,
        )),
        None => None,
    };
    static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        format,
        file,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
    Ok(())
}
