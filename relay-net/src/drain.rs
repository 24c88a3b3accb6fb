//! Early answers that every HTTP/2 client reads.
//!
//! A handler that answers before reading the request body (401 before the credential is
//! looked at twice, 413 from a `content-length`, 415 from a `content-type`, 429 …) leaves
//! the client still sending. HTTP/2 then closes the stream with `RST_STREAM` after the
//! response, and some clients (curl 7.88 among them) drop the response they already have
//! when the reset arrives mid-upload: no status at all. [`drain_request_body`] reads what is
//! left of the body — at most [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`] — before the
//! response goes out, so the stream ends the ordinary way. Beyond those bounds the response
//! goes out anyway (and the reset follows): an attacker cannot make us read more than that.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The most of an unread request body read after the handler answered.
pub const DRAIN_LIMIT: usize = 1 << 20;
/// The longest that reading takes.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Middleware (`axum::middleware::from_fn(drain_request_body)`): after the handler, reads
/// the rest of the request body it left (at most [`DRAIN_LIMIT`] bytes), then returns its
/// response.
pub async fn drain_request_body(req: Request, next: Next) -> Response {
    drain_up_to(DRAIN_LIMIT, req, next).await
}

/// [`drain_request_body`] with another bound, for listeners whose bodies may be larger
/// (`from_fn(move |req, next| drain_up_to(limit, req, next))`).
pub async fn drain_up_to(limit: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(Some(body)));
    let tap = Tap {
        shared: Arc::clone(&shared),
    };
    let response = next.run(Request::from_parts(parts, Body::new(tap))).await;
    let rest = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut rest) = rest
        && !rest.is_end_stream()
    {
        let drained = tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = rest.frame().await {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > limit {
                    return false;
                }
            }
            true
        })
        .await;
        if !matches!(drained, Ok(true)) {
            metrics::counter!("relay_request_bodies_undrained_total").increment(1);
        }
    }
    response
}

/// The request body as the handler sees it; what the handler leaves stays in `shared`.
struct Tap {
    shared: Arc<Mutex<Option<Body>>>,
}

impl http_body::Body for Tap {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt as _;

    /// A body the test feeds by hand, to see what was read.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        Body,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&read);
        let stream = async_stream(move |cx| {
            rx.poll_recv(cx).map(|o| {
                o.map(|b| {
                    counter.fetch_add(b.len(), std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Frame::data(b))
                })
            })
        });
        (tx, Body::new(stream), read)
    }

    struct PollFn<F>(F);
    impl<F> http_body::Body for PollFn<F>
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> + Unpin,
    {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            (self.0)(cx)
        }
    }
    fn async_stream<F>(f: F) -> PollFn<F>
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> + Unpin,
    {
        PollFn(f)
    }

    fn app() -> Router {
        Router::new()
            .route("/early", post(|| async { (http::StatusCode::UNAUTHORIZED, "no") }))
            .route("/reads", post(|body: Bytes| async move { format!("{}", body.len()) }))
            .layer(axum::middleware::from_fn(drain_request_body))
    }

    #[tokio::test]
    async fn an_early_answer_waits_for_the_rest_of_the_body() {
        let (tx, body, read) = channel_body();
        let req = http::Request::post("/early").body(body).unwrap();
        let call = tokio::spawn(app().oneshot(req));
        for _ in 0..4 {
            tx.send(Bytes::from_static(&[0u8; 1000])).await.unwrap();
        }
        drop(tx);
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            read.load(std::sync::atomic::Ordering::SeqCst),
            4000,
            "the whole body was read"
        );
    }

    #[tokio::test]
    async fn draining_stops_at_the_limit() {
        let (tx, body, read) = channel_body();
        let req = http::Request::post("/early").body(body).unwrap();
        let call = tokio::spawn(app().oneshot(req));
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        // The client would go on forever; the answer comes once the limit is passed.
        let feeder = tokio::spawn(async move { while tx.send(chunk.clone()).await.is_ok() {} });
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
        let n = read.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n > DRAIN_LIMIT && n < DRAIN_LIMIT + 64 * 1024 * 70, "{n}");
        feeder.abort();
    }

    #[tokio::test]
    async fn draining_stops_at_the_time_bound() {
        let (tx, body, _read) = channel_body();
        let req = http::Request::post("/early").body(body).unwrap();
        // A client that stops sending without ending the body.
        tx.send(Bytes::from_static(b"partial")).await.unwrap();
        let started = std::time::Instant::now();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
        assert!(started.elapsed() >= DRAIN_TIME && started.elapsed() < DRAIN_TIME * 3);
        drop(tx);
    }

    #[tokio::test]
    async fn handlers_still_read_the_body() {
        let req = http::Request::post("/reads").body(Body::from(vec![1u8; 5000])).unwrap();
        let resp = app().oneshot(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"5000");
    }
}
