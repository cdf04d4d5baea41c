//! The datapath's log lines (aya-log: rare conditions such as a full map or a frame that
//! cannot be parsed), read from its `AYA_LOGS` ring buffer and written to the agent's log
//! through `tracing`, target `netpol::datapath`. Off unless `--datapath-log` asks.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// How much the programs log (`AYA_LOG_LEVEL`, a read-only global: the verifier drops
/// the log calls of the levels that are off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// The value of `AYA_LOG_LEVEL` (aya-log's levels: error 1 .. trace 5).
    pub fn global(self) -> u8 {
        match self {
            Level::Off => 0,
            Level::Error => 1,
            Level::Warn => 2,
            Level::Info => 3,
            Level::Debug => 4,
        }
    }
}

/// aya-log hands records to a `log::Log`; this one writes them with `tracing`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "netpol::datapath", "{message}"),
            log::Level::Warn => tracing::warn!(target: "netpol::datapath", "{message}"),
            log::Level::Info => tracing::info!(target: "netpol::datapath", "{message}"),
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "netpol::datapath", "{message}")
            }
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log lines, handing them to `T` (the agent's: `tracing`).
pub struct DatapathLog<T: log::Log = ToTracing>(EbpfLogger<T>);

impl<T: log::Log> DatapathLog<T> {
    /// None when the programs log nothing (`level` off).
    pub fn take(ebpf: &mut Ebpf, level: Level, to: T) -> anyhow::Result<Option<Self>> {
        if level == Level::Off {
            return Ok(None);
        }
        let logger = EbpfLogger::init_with_logger(ebpf, to)
            .map_err(|e| anyhow::anyhow!("reading the datapath's log (aya-log): {e}"))?;
        Ok(Some(DatapathLog(logger)))
    }

    /// Writes whatever the programs logged so far.
    pub fn flush(&mut self) {
        self.0.flush();
    }

    /// Writes the programs' log lines as they come, until polling fails (logged).
    pub async fn run(self) {
        // SAFETY: the logger owns its ring buffer's file descriptor, which stays open and
        // the same until the `AsyncFd` (which owns the logger) is dropped.
        let registered =
            unsafe { AsyncFd::register_with_interest(self.0, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot poll the datapath's log: no datapath log lines");
                return;
            }
        };
        loop {
            match fd.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    tracing::error!(error = %e, "polling the datapath's log failed: no more datapath log lines");
                    return;
                }
            }
        }
    }
}
