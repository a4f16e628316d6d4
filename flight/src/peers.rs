//! Connections to peer gateways: one lazily connected gRPC channel each, carrying the
//! bearer token if the gateway has one, with TLS if a CA to verify peers is given.

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::tuning;

/// Adds `authorization: Bearer <token>` to every outgoing call (when there is a token).
#[derive(Clone, Debug)]
pub struct AddToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AddToken {
    /// An interceptor sending `token`, or nothing.
    pub fn new(token: Option<&str>) -> Result<AddToken, String> {
        let header = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token is not a valid header value".to_string())?,
            ),
        };
        Ok(AddToken { header })
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A Flight client of one peer.
pub type PeerClient = FlightServiceClient<InterceptedService<Channel, AddToken>>;

/// One peer gateway.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `HOST:PORT` as given.
    pub addr: String,
    /// The client (cheap to clone; clones share the connection).
    pub client: PeerClient,
}

impl Peer {
    /// A peer at `addr` (`HOST:PORT`); connects on first use. With `ca`, TLS verifying the
    /// peer's certificate against it.
    pub fn new(addr: &str, token: &AddToken, ca: Option<&[u8]>) -> Result<Peer, String> {
        let scheme = if ca.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(tuning::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(tuning::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(tuning::KEEPALIVE_TIMEOUT)
            .initial_stream_window_size(tuning::STREAM_WINDOW)
            .initial_connection_window_size(tuning::CONNECTION_WINDOW)
            .max_frame_size(tuning::MAX_FRAME);
        if let Some(pem) = ca {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            ep = ep
                .tls_config(tls)
                .map_err(|e| format!("TLS for peer {addr}: {e}"))?;
        }
        let channel = ep.connect_lazy();
        let client = FlightServiceClient::with_interceptor(channel, token.clone())
            .max_decoding_message_size(tuning::MAX_MESSAGE)
            .max_encoding_message_size(tuning::MAX_MESSAGE);
        Ok(Peer {
            addr: addr.to_string(),
            client,
        })
    }
}

/// A duration for log lines.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
