//! The socket under the router: the JSON error body also on the answers hyper gives by
//! itself.
//!
//! hyper's HTTP/1 server answers a request it cannot parse before any service sees it —
//! 400 for a malformed request line or header, 414 for a request target over 65,534
//! bytes, 431 for a request head larger than its read buffer or with more than 100
//! header fields — with an empty body, then closes the connection. hyper has no hook for
//! that answer (its `on_parse_error` writes a fixed head; a customization is discussed in
//! hyperium/hyper#3844 and was not released), and its checks cannot be pre-empted by a
//! middleware because they run before the request exists. [`JsonErrors`] wraps the socket
//! instead: when hyper writes such an answer, the wrapper sends the same status with the
//! JSON error body every other error of the API carries.
//!
//! hyper writes that answer only between requests (it reads the next request head after
//! the previous answer went out), so it is always the whole of one write; the router's
//! own error answers always have a body. Vectored writes pass through as the socket
//! takes them (a response's head and body are not copied together); a write of one
//! buffer — which is how hyper's head-only answer arrives — is the one that is checked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::util::error_body;

/// A socket whose hyper-generated error answers get a JSON body.
#[derive(Debug)]
pub(super) struct JsonErrors<T> {
    inner: T,
    /// A replacement answer still being written, and how much of it went out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrors<T> {
    pub(super) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = with_json_body(buf) {
            this.pending = Some((answer, 0));
            // Whatever does not go out now goes out on the flush that follows.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's own error answers are a head alone: one slice, checked as above. Anything
        // else (a head and a body) goes through without being copied together.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.poll_write(cx, only);
        }
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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

/// If `buf` is a complete error answer without a body (what hyper writes for a request
/// it cannot parse), the same answer with a JSON error body.
fn with_json_body(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_suffix(b"\r\n\r\n")?;
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    if status < 400 {
        return None;
    }
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        } else if !name.eq_ignore_ascii_case("connection") {
            kept.push(line);
        }
    }
    if !empty {
        return None;
    }
    let (code, message) = match status {
        400 => (
            "MalformedRequest",
            "the request is not valid HTTP/1.1: its request line or a header is malformed",
        ),
        414 => ("UriTooLong", "the request URI is longer than 65534 bytes"),
        431 => (
            "RequestHeadersTooLarge",
            "the request headers are too large: more than 100 header fields, or a request \
             head larger than the server's read buffer",
        ),
        _ => (
            "RequestRejected",
            "the request was rejected before it reached the API",
        ),
    };
    let body = error_body(code, message);
    let mut out = Vec::with_capacity(head.len() + body.len() + 128);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json; charset=utf-8\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(answer: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        let length = format!("content-length: {}", body.len());
        assert!(head.contains(&length), "{head}");
        (head.to_owned(), json)
    }

    #[test]
    fn hyper_error_answers_get_the_json_error_body() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2024 00:00:00 GMT\r\n\r\n";
        let (head, body) = parts(&with_json_body(hyper).unwrap());
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("date: Thu, 01 Jan 2024 00:00:00 GMT"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("connection: close"));
        assert_eq!(body["error"], "RequestHeadersTooLarge");
        assert_eq!(body["ExceptionMessage"], body["message"]);

        let (_, body) = parts(
            &with_json_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap(),
        );
        assert_eq!(body["error"], "MalformedRequest");
        let (_, body) = parts(
            &with_json_body(
                b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .unwrap(),
        );
        assert_eq!(body["error"], "UriTooLong");
    }

    #[test]
    fn other_writes_pass_unchanged() {
        for buf in [
            &b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"{\"id\":\"HTTP/1.1 400 \"}",
            b"",
        ] {
            assert!(with_json_body(buf).is_none(), "{:?}", String::from_utf8_lossy(buf));
        }
    }
}
