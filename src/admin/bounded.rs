//! The admin endpoint's listener: at most a few connections at once, each
//! for a few seconds. hyper, as axum runs it, has no header timeout, and
//! every connection is a task on the runtime the flusher shares, so a
//! client that opens many connections, or sends its request a byte a
//! minute, must not hold them.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// The longest a connection lives: a scrape takes milliseconds, and a
/// client that sends its request a byte a minute must not hold a slot.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// A listener that serves at most [`MAX_CONNECTIONS`] at once, each for at
/// most [`CONNECTION_LIFETIME`].
pub(crate) struct Bounded<L> {
    inner: L,
    slots: Arc<tokio::sync::Semaphore>,
}

impl<L> Bounded<L> {
    pub(crate) fn new(inner: L) -> Self {
        Bounded {
            inner,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Bounded<L>
where
    L::Addr: std::fmt::Debug,
{
    type Io = Timed<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("the connection slots are never closed"),
        };
        let (io, addr) = self.inner.accept().await;
        let io = Timed {
            io,
            deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
            _slot: slot,
        };
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its reads and writes once its time is up, and
/// frees its slot when dropped.
pub(crate) struct Timed<I> {
    io: I,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<I> Timed<I> {
    /// Err once the connection's time is up (and registers for the wake-up
    /// when it will be).
    fn expired(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "admin connection open too long",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Timed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Timed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
