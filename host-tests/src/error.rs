//! Errors of the host. A guest trap is an ordinary `Err`, never a panic of the test process.

use std::fmt;

#[derive(Debug)]
pub enum HostError {
    /// The module could not be found, compiled or instantiated.
    Load(String),
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack exhaustion) or ran
    /// past the call timeout, while running `export`.
    Trap {
        export: String,
        /// True when the call was interrupted by the timeout rather than trapping by itself.
        timeout: bool,
        message: String,
        /// What the guest printed on stderr (a Rust panic message ends up here).
        stderr: String,
    },
    /// An earlier call trapped: the instance is in an unknown state, as Envoy would consider it.
    Poisoned,
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false.
    Rejected { phase: &'static str, logs: Vec<String> },
    /// The scenario used the API out of order (e.g. a body before headers).
    Usage(String),
}

impl HostError {
    pub fn is_trap(&self) -> bool {
        matches!(self, HostError::Trap { .. })
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Load(m) => write!(f, "loading the wasm module: {m}"),
            HostError::Trap { export, timeout, message, stderr } => {
                let what = if *timeout { "timed out" } else { "trapped" };
                write!(f, "guest {what} in {export}: {message}")?;
                if !stderr.is_empty() {
                    write!(f, "\nguest stderr:\n{stderr}")?;
                }
                Ok(())
            }
            HostError::Poisoned => write!(f, "the instance trapped earlier and cannot be used"),
            HostError::Rejected { phase, logs } => {
                write!(f, "{phase} returned false; guest logs:")?;
                for l in logs {
                    write!(f, "\n  {l}")?;
                }
                Ok(())
            }
            HostError::Usage(m) => write!(f, "scenario misuse: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

pub type Result<T, E = HostError> = std::result::Result<T, E>;
