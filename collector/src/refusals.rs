//! hyper refuses a request it cannot parse (400), a URI past 65,534 bytes (414) and too
//! many or too large headers (431) itself, before any handler runs, with an empty body.
//! Every other refusal is JSON with a reason; this wrapper of a connection gives those the
//! same. It recognizes hyper's bodiless error head as hyper writes it (hyper closes the
//! connection after it) and writes a JSON answer in its place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose parse refusals get a JSON body.
pub(crate) struct JsonRefusals<S> {
    inner: S,
    /// The answer written in place of hyper's, and how much of it is out.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> JsonRefusals<S> {
    pub(crate) fn new(inner: S) -> Self {
        JsonRefusals {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// The reason given for each status hyper answers on its own.
fn reason(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => {
            "the request is not valid HTTP/1.x: its request line, a header or its content-length could not be parsed"
        }
        "414" => "the request's URI is longer than 65,534 bytes",
        "431" => {
            "the request's headers are too many (more than 100) or too large (about 400 KB with the request line)"
        }
        _ => return None,
    })
}

/// The JSON answer for `buf` when it is exactly one of hyper's own error heads: status
/// 400, 414 or 431, `content-length: 0`, no content type (every answer of the handlers
/// has one) and, in HTTP/1.1, `connection: close` (hyper closes after its own).
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    if !buf.starts_with(b"HTTP/1.") || !buf.ends_with(b"\r\n\r\n") || buf.len() > 1024 {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let reason = reason(status_line.get(9..12)?)?;
    let mut empty = false;
    let mut closes = !status_line.starts_with("HTTP/1.1");
    let mut date = None;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            return None;
        } else if name.eq_ignore_ascii_case("content-length") {
            empty = value == "0";
        } else if name.eq_ignore_ascii_case("date") {
            date = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            closes = value.eq_ignore_ascii_case("close");
        }
    }
    if !empty || !closes {
        return None;
    }
    let body = serde_json::json!({ "error": reason }).to_string();
    let mut out = format!(
        "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(d) = date {
        out.push_str(&format!("date: {d}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<S: AsyncWrite + Unpin> JsonRefusals<S> {
    /// Writes what is left of a replaced answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` in place of writing it when it is one of hyper's error heads.
    fn replaced(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<usize>> {
        let answer = replacement(buf)?;
        self.pending = answer;
        self.sent = 0;
        // The rest goes out with the flush hyper makes next.
        match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            _ => Some(Ok(buf.len())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonRefusals<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(r) = self.replaced(cx, buf) {
            return Poll::Ready(r);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // An error head goes alone: hyper writes no body after it.
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (full.next(), full.next())
            && let Some(r) = self.replaced(cx, only)
        {
            return Poll::Ready(r);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Sat, 28 Nov 2026 04:32:33 GMT";

    fn hyper_head(status: &str) -> String {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n")
    }

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(answer.to_vec()).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len(), "{text}");
        (head.to_owned(), serde_json::from_str(body).expect("json"))
    }

    #[test]
    fn hypers_own_refusals_become_json_with_a_reason() {
        for (status, says) in [
            ("400 Bad Request", "not valid HTTP"),
            ("414 URI Too Long", "URI"),
            ("431 Request Header Fields Too Large", "headers"),
        ] {
            let answer = replacement(hyper_head(status).as_bytes()).expect(status);
            let (head, body) = split(&answer);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains("connection: close"), "{head}");
            assert!(head.contains(DATE), "{head}");
            assert!(
                body["error"].as_str().is_some_and(|e| e.contains(says)),
                "{body}"
            );
        }
    }

    #[test]
    fn every_other_answer_passes_unchanged() {
        for other in [
            // The handlers' refusals carry a type (and a body).
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n".to_owned(),
            // Other statuses, a head with its body, one cut short, HTTP/2 preface.
            hyper_head("413 Payload Too Large"),
            hyper_head("200 OK"),
            hyper_head("400 Bad Request") + "{}",
            hyper_head("400 Bad Request")[..40].to_owned(),
            "PRI * HTTP/2.0\r\n\r\n".to_owned(),
            String::new(),
            "HTTP/1.1 4".to_owned(),
            "HTTP/1.1 400 Bad Request\r\nbroken header\r\n\r\n".to_owned(),
            // A bare 400 of a handler keeps its connection: not hyper's.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_owned(),
        ] {
            assert!(replacement(other.as_bytes()).is_none(), "{other:?}");
        }
        let long = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert!(replacement(long.as_bytes()).is_none());
    }

    #[tokio::test]
    async fn a_head_written_alone_among_empty_slices_is_replaced_too() {
        use tokio::io::AsyncWriteExt;
        let head = hyper_head("414 URI Too Long");
        let mut w = JsonRefusals::new(Vec::new());
        let n = w
            .write_vectored(&[
                io::IoSlice::new(b""),
                io::IoSlice::new(head.as_bytes()),
                io::IoSlice::new(b""),
            ])
            .await
            .expect("write");
        assert_eq!(n, head.len());
        w.flush().await.expect("flush");
        let (status, body) = split(&w.inner);
        assert!(status.starts_with("HTTP/1.1 414"), "{status}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("URI")));
        // Two slices with bytes: passed on as they are.
        let mut w = JsonRefusals::new(Vec::new());
        let n = w
            .write_vectored(&[io::IoSlice::new(head.as_bytes()), io::IoSlice::new(b"x")])
            .await
            .expect("write");
        assert_eq!(n, head.len() + 1);
        assert!(w.inner.starts_with(head.as_bytes()));
    }

    /// A sink that takes at most `step` bytes a write and is not ready every other call.
    struct Slow {
        out: Vec<u8>,
        step: usize,
        ready: bool,
    }

    impl AsyncWrite for Slow {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_slow_socket_gets_the_whole_answer_and_other_bytes_unchanged() {
        use tokio::io::AsyncWriteExt;
        let slow = Slow {
            out: Vec::new(),
            step: 7,
            ready: false,
        };
        let mut w = JsonRefusals::new(slow);
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("write");
        w.write_all(hyper_head("431 Request Header Fields Too Large").as_bytes())
            .await
            .expect("write");
        w.flush().await.expect("flush");
        w.shutdown().await.expect("shutdown");
        let out = w.inner.out;
        let rest = out
            .strip_prefix(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".as_slice())
            .expect("the first answer unchanged");
        let (head, body) = split(rest);
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
}
