//! What a guest prints: its stdout and stderr (a Rust panic message, a Python traceback, a
//! debugging `print`) are kept per call instead of lost, then logged with the event, shown by
//! `plugin test`, and added to the failure message of a call that trapped.
//!
//! Writing never fails or blocks the guest: past [`MAX_KEPT`] bytes per call, output is
//! counted and dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Output kept per call; the rest is counted.
pub const MAX_KEPT: usize = 16 * 1024;

/// The guest's stdout and stderr, shared by both streams of one instance.
#[derive(Debug, Clone, Default)]
pub struct GuestOutput(Arc<Mutex<Captured>>);

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl GuestOutput {
    fn push(&self, data: &[u8]) {
        if let Ok(mut c) = self.0.lock() {
            let room = MAX_KEPT.saturating_sub(c.bytes.len());
            let kept = data.len().min(room);
            c.bytes.extend_from_slice(&data[..kept]);
            c.dropped += data.len() - kept;
        }
    }

    /// What was printed since the last call to this, as text (None if nothing).
    pub fn take(&self) -> Option<String> {
        let mut c = self.0.lock().ok()?;
        if c.bytes.is_empty() && c.dropped == 0 {
            return None;
        }
        let mut text = String::from_utf8_lossy(&c.bytes).trim().to_string();
        if c.dropped > 0 {
            text.push_str(&format!(" … ({} more bytes dropped)", c.dropped));
        }
        c.bytes.clear();
        c.dropped = 0;
        Some(text)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_KEPT)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_output_per_take_and_drops_past_the_cap() {
        let out = GuestOutput::default();
        assert_eq!(out.take(), None);
        out.push(b"panicked at src/lib.rs:3:5:\nboom\n");
        assert_eq!(
            out.take().as_deref(),
            Some("panicked at src/lib.rs:3:5:\nboom")
        );
        assert_eq!(out.take(), None);
        out.push(&vec![b'x'; MAX_KEPT + 10]);
        let text = out.take().unwrap();
        assert!(
            text.ends_with("(10 more bytes dropped)"),
            "{}",
            &text[text.len() - 40..]
        );
    }
}
