//! quilt's messages, through the ORT logger when one is available (else stderr), filtered by the
//! `log_level` option.

use std::ffi::CString;
use std::fmt;

use ort_sys::{OrtLogger, OrtLoggingLevel};

use crate::api::Api;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Verbose,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "verbose" => LogLevel::Verbose,
            "info" => LogLevel::Info,
            "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            _ => return None,
        })
    }

    fn ort(self) -> OrtLoggingLevel {
        match self {
            LogLevel::Verbose => OrtLoggingLevel::ORT_LOGGING_LEVEL_VERBOSE,
            LogLevel::Info => OrtLoggingLevel::ORT_LOGGING_LEVEL_INFO,
            LogLevel::Warning => OrtLoggingLevel::ORT_LOGGING_LEVEL_WARNING,
            LogLevel::Error => OrtLoggingLevel::ORT_LOGGING_LEVEL_ERROR,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Verbose => "verbose",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        })
    }
}

/// A logger bound to an ORT logger (the session's, or the environment's default).
#[derive(Clone, Copy)]
pub struct Log {
    api: Api,
    logger: *const OrtLogger,
    level: LogLevel,
}

// The ORT logger is thread-safe and outlives the session that uses it.
unsafe impl Send for Log {}
unsafe impl Sync for Log {}

impl Log {
    pub fn new(api: Api, logger: *const OrtLogger, level: LogLevel) -> Log {
        Log { api, logger, level }
    }

    pub fn logger(&self) -> *const OrtLogger {
        self.logger
    }

    pub fn enabled(&self, level: LogLevel) -> bool {
        level >= self.level
    }

    pub fn log(&self, level: LogLevel, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let text = format!("[QuiltExecutionProvider] {msg}");
        if !self.logger.is_null() {
            let c = CString::new(text.replace('\0', " ")).unwrap_or_default();
            let status = unsafe {
                (self.api.ort.Logger_LogMessage)(
                    self.logger,
                    level.ort(),
                    c.as_ptr(),
                    c"quilt".as_ptr(),
                    0,
                    c"QuiltExecutionProvider".as_ptr(),
                )
            };
            if self.api.check("Logger_LogMessage", status).is_ok() {
                return;
            }
        }
        eprintln!("{level}: {text}");
    }

    pub fn verbose(&self, msg: impl FnOnce() -> String) {
        if self.enabled(LogLevel::Verbose) {
            self.log(LogLevel::Verbose, &msg());
        }
    }

    pub fn info(&self, msg: &str) {
        self.log(LogLevel::Info, msg)
    }

    pub fn warning(&self, msg: &str) {
        self.log(LogLevel::Warning, msg)
    }
}
