//! The HTTP/3 transport of the SDK: one QUIC connection (quinn + h3), re-established on
//! demand, carrying the same requests as the HTTP/2 transport.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Request, Uri};
use tokio::sync::Mutex;

use crate::{ClientError, RawResponse};

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

pub(crate) struct H3 {
    host: String,
    port: u16,
    config: quinn::ClientConfig,
    local: Option<std::net::IpAddr>,
    resolve: Option<SocketAddr>,
    state: Mutex<Option<(quinn::Endpoint, Sender)>>,
}

impl std::fmt::Debug for H3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl H3 {
    pub(crate) fn new(
        uri: &Uri,
        mut tls: rustls::ClientConfig,
        local: Option<std::net::IpAddr>,
        resolve: Option<SocketAddr>,
    ) -> Result<Self, ClientError> {
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(format!("QUIC TLS: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
        config.transport_config(Arc::new(transport));
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Config("server URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(443),
            config,
            local,
            resolve,
            state: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<(quinn::Endpoint, Sender), ClientError> {
        let addr: SocketAddr = match self.resolve {
            Some(fixed) => SocketAddr::new(fixed.ip(), self.port),
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| ClientError::Transport(format!("resolving {}: {e}", self.host)))?
                .next()
                .ok_or_else(|| ClientError::Transport(format!("{} has no address", self.host)))?,
        };
        let bind = match self.local {
            Some(ip) => SocketAddr::new(ip, 0),
            None if addr.is_ipv6() => SocketAddr::from(([0u16; 8], 0)),
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Transport(e.to_string()))?;
        endpoint.set_default_client_config(self.config.clone());
        let conn = endpoint
            .connect(addr, &self.host)
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .await
            .map_err(|e| ClientError::Transport(format!("QUIC handshake: {e}")))?;
        let (mut driver, sender) = h3::client::builder()
            .max_field_section_size(16 * 1024)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| ClientError::Transport(format!("HTTP/3 set-up: {e}")))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok((endpoint, sender))
    }

    async fn sender(&self, fresh: bool) -> Result<Sender, ClientError> {
        let mut state = self.state.lock().await;
        if fresh {
            *state = None;
        }
        if let Some((_, s)) = state.as_ref() {
            return Ok(s.clone());
        }
        let (endpoint, sender) = self.connect().await?;
        *state = Some((endpoint, sender.clone()));
        Ok(sender)
    }

    pub(crate) async fn request(&self, req: Request<Bytes>) -> Result<RawResponse, ClientError> {
        match self.exchange(req.clone(), false).await {
            Err(ClientError::Transport(_)) => self.exchange(req, true).await,
            other => other,
        }
    }

    async fn exchange(&self, req: Request<Bytes>, fresh: bool) -> Result<RawResponse, ClientError> {
        let mut sender = self.sender(fresh).await?;
        let (parts, body) = req.into_parts();
        let t = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let mut stream = sender
            .send_request(Request::from_parts(parts, ()))
            .await
            .map_err(|e| t(&e))?;
        // A server may answer before reading the whole body (413, 415, ...) and stop the
        // request stream: a failed upload still has a response worth reading.
        let sent = async {
            if !body.is_empty() {
                stream.send_data(body).await?;
            }
            stream.finish().await
        }
        .await;
        let resp = match stream.recv_response().await {
            Ok(r) => r,
            Err(e) => return Err(sent.err().map_or_else(|| t(&e), |s| t(&s))),
        };
        let mut out = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| t(&e))? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                out.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        let (parts, ()) = resp.into_parts();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body: out.freeze(),
        })
    }
}
