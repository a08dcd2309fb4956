//! One upgraded WebSocket: fastwebsockets reads (through [`Frames`]), our writer task writes
//! the raw half. Every endpoint drives it the same way: [`Socket::read`] until the end, then
//! [`Socket::finish`].

use super::frames::{Ending, Frames, Read};
use super::reassembly::Reassembler;
use super::writer::{self, WriterConfig, WriterEnd};
use crate::metrics::Metrics;
use fan_out::Outbound;
use protocol::Format;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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
        let (outbound, rx) = Outbound::new(config.format, config.queue_bytes);
        let outbound = Arc::new(outbound);
        let epoch = Instant::now();
        let last_seen = Arc::new(AtomicU64::new(0));
        let writer_task = tokio::spawn(writer::run(
            write_half,
            rx,
            outbound.clone(),
            last_seen.clone(),
            epoch,
            config.writer,
            metrics.clone(),
        ));
        let frames = Frames {
            reader,
            reassembler: Reassembler::new(config.max_message_bytes),
            outbound: outbound.clone(),
            last_seen,
            epoch,
            metrics,
        };
        Socket {
            frames,
            outbound,
            writer_task,
            writer_end: None,
        }
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
