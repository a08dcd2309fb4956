//! One upgraded WebSocket: fastwebsockets reads (through [`Frames`]), our writer task writes
//! the raw half. Every endpoint drives it the same way: [`Socket::read`] until the end, then
//! [`Socket::finish`].
//!
//! A WebSocket that upgrades an Engine.IO long-polling session starts as a [`Probe`]: it reads,
//! and writes the probe answer itself, while the session's queue still drains over polling;
//! [`Probe::attach`] then hands it the session's queue and starts the writer, so that nothing
//! queued is lost or reordered by the switch.

use super::frames::{Ending, Frames, Read};
use super::reassembly::Reassembler;
use super::writer::{self, WriterConfig, WriterEnd};
use crate::metrics::Metrics;
use fan_out::{OutFrame, Outbound};
use protocol::Format;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::time::{timeout, Instant};

/// What a socket is opened with.
#[derive(Debug, Clone, Copy)]
pub struct SocketConfig {
    /// What the outbound queue's data frames are (text or binary).
    pub format: Format,
    /// The largest whole message a client may send.
    pub max_message_bytes: usize,
    /// The outbound queue's bound; over it the client is a slow consumer (4009).
    pub queue_bytes: usize,
    pub writer: WriterConfig,
}

pub struct Socket<S> {
    frames: Frames<S>,
    pub outbound: Arc<Outbound>,
    writer_task: tokio::task::JoinHandle<WriterEnd>,
    /// Set when `read` saw the writer end.
    writer_end: Option<WriterEnd>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket<S> {
    /// Splits an upgraded WebSocket: a reader that leaves pongs, closes and reassembly to us
    /// and refuses frames over `max_message_bytes`, and a writer task draining a new outbound
    /// queue.
    pub fn open(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
    ) -> Socket<S> {
        let (outbound, rx) = Outbound::new(config.format, config.queue_bytes);
        let outbound = Arc::new(outbound);
        Probe::split(ws, config, metrics, outbound.clone()).attach(outbound, rx)
    }

    /// The next whole message, or the end of the connection. Not cancel-safe (a frame may be
    /// half read): only race it against something after which the connection closes anyway.
    pub async fn read(&mut self) -> Read {
        tokio::select! {
            biased;
            end = &mut self.writer_task => {
                self.writer_end = Some(end.unwrap_or(WriterEnd::SocketGone));
                Read::Ended(Ending::Closed)
            }
            read = self.frames.next() => {
                if read == Read::Ended(Ending::Gone) {
                    self.writer_task.abort();
                }
                read
            }
        }
    }

    /// After the loop: lets the writer send our Close (for at most `limit`), gives the client
    /// a moment to answer it, and stops the writer. Returns how the writer ended.
    pub async fn finish(&mut self, limit: Duration) -> Option<WriterEnd> {
        let end = match self.writer_end.take() {
            Some(end) => Some(end),
            None => timeout(limit, &mut self.writer_task)
                .await
                .ok()
                .and_then(Result::ok),
        };
        if let Some(WriterEnd::Closed(_)) = end {
            self.frames.await_close().await;
        }
        self.writer_task.abort();
        end
    }
}

/// A WebSocket not yet given a queue: it reads, and writes text messages directly. Used for
/// the Engine.IO probe (`2probe` → `3probe`) of a long-polling session's upgrade.
pub struct Probe<S> {
    frames: Frames<S>,
    write_half: WriteHalf<S>,
    config: SocketConfig,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Probe<S> {
    /// Splits an upgraded WebSocket: a reader that leaves pongs, closes and reassembly to us
    /// and refuses frames over `max_message_bytes`; the write half waits for [`Probe::attach`].
    pub fn open(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
    ) -> Probe<S> {
        // Until `attach`, pongs and closes the reader queues go nowhere: a probe that fails
        // is simply dropped, and the session carries on over polling.
        let (placeholder, _) = Outbound::new(config.format, 0);
        Probe::split(ws, config, metrics, Arc::new(placeholder))
    }

    /// The split itself; `outbound` takes the reader's pongs and closes.
    fn split(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
        outbound: Arc<Outbound>,
    ) -> Probe<S> {
        let (read_half, write_half) = tokio::io::split(ws.into_inner());
        let (mut reader, _) = fastwebsockets::after_handshake_split(
            read_half,
            tokio::io::sink(),
            fastwebsockets::Role::Server,
        );
        reader.set_auto_close(false);
        reader.set_auto_pong(false);
        // fastwebsockets refuses frames of `>= max` bytes; ours is an inclusive limit.
        reader.set_max_message_size(config.max_message_bytes + 1);
        let frames = Frames {
            reader,
            reassembler: Reassembler::new(config.max_message_bytes),
            outbound,
            last_seen: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            metrics,
        };
        Probe {
            frames,
            write_half,
            config,
        }
    }

    /// The next whole message, or the end. Not cancel-safe (see [`Socket::read`]).
    pub async fn read(&mut self) -> Read {
        self.frames.next().await
    }

    /// Writes one text message now, within the write timeout.
    pub async fn send_text(&mut self, text: &str) -> bool {
        let mut buf = Vec::with_capacity(text.len() + 2);
        writer::put_frame(&mut buf, writer::OP_TEXT, text.as_bytes());
        let write = async {
            self.write_half.write_all(&buf).await?;
            self.write_half.flush().await
        };
        matches!(
            timeout(self.config.writer.write_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Becomes a full socket: `rx` (the receiving end of `outbound`) is drained onto the
    /// WebSocket by a new writer task, in queue order.
    pub fn attach(
        mut self,
        outbound: Arc<Outbound>,
        rx: tokio::sync::mpsc::UnboundedReceiver<OutFrame>,
    ) -> Socket<S> {
        self.frames.outbound = outbound.clone();
        let writer_task = tokio::spawn(writer::run(
            self.write_half,
            rx,
            outbound.clone(),
            self.frames.last_seen.clone(),
            self.frames.epoch,
            self.config.writer,
            self.frames.metrics.clone(),
        ));
        Socket {
            frames: self.frames,
            outbound,
            writer_task,
            writer_end: None,
        }
    }
}
