//! A connection whose client takes nothing of its answer for [`WRITE_STALL`] is closed.
//! hyper does not poll a response body while its write buffer is full, so a live tail
//! page whose client stopped reading kept its viewer slot (one of a few) and its queue as
//! long as TCP kept the connection: forever, for a client alive but not reading.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a client may take none of the bytes sent to it.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// A connection whose writes fail once none has made progress for `limit`.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed at the first write the socket could not take; reset by any progress.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took nothing of its answer for {} s",
                    self.limit.as_secs()
                ),
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_cut_off() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(10), w.write_all(&vec![b'x'; 1 << 20]))
            .await
            .expect("cut off, not left waiting")
            .expect_err("cut off");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("took nothing"), "{e}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }

    #[tokio::test]
    async fn a_slow_client_that_keeps_reading_gets_everything() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(500));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // Slower than the whole answer takes, never as slow as the limit.
                tokio::time::sleep(Duration::from_millis(20)).await;
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => break got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let answer = vec![b'y'; 64 * 1024];
        w.write_all(&answer).await.expect("written");
        w.shutdown().await.expect("shut down");
        drop(w);
        assert_eq!(reader.await.expect("reader"), answer);
    }
}
