//! The media of one call: a pure core and the tokio task that drives it.

mod driver;
mod engine;
mod ports;

pub use self::driver::{CallMedia, CallMediaHandle, MediaConfig};
pub use self::engine::{LegId, LegStats, MediaCore, MediaEvent, MediaStats, Output};
pub use self::ports::PortAllocator;
