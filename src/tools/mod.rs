//! Plugin authors' tools, with no Redis: [`new`] (`plugin new`: a project from
//! `templates/`), [`inspect`] (`plugin inspect`) and [`test`] (`plugin test`: run a plugin on
//! recorded events with the host's runtime and limits, job state in memory).

mod inspect;
mod new;
mod test;

pub use inspect::{Inspection, inspect};
pub use new::{Lang, new_plugin};
pub use test::{EventReport, TestReport, read_events, run_test};
