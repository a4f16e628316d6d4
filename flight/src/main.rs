//! `plasma_flight`: an Arrow Flight gateway for one Plasma store. It serves the store's
//! objects to other machines over Flight (DoGet, DoPut, ListFlights, GetFlightInfo) and,
//! when the store reports a get for an object it does not hold, pulls that object from a
//! peer gateway so the waiting get completes as if it had been local. See
//! `flight/README.md` for the contract.

mod error;
mod form;
mod local;
mod peers;
mod pull;
mod service;
mod tuning;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use clap::Parser;
use plasma_store::client::Client;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::local::Local;
use crate::peers::{AddToken, Peer};

/// An Arrow Flight gateway between Plasma stores on different machines.
#[derive(Parser, Debug)]
#[command(name = "plasma_flight", version, about)]
struct Args {
    /// The local store's Unix socket.
    #[arg(short = 's', long = "socket", value_name = "SOCKET")]
    socket: PathBuf,
    /// Address to serve Flight on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8815", value_parser = parse_listen)]
    listen: SocketAddr,
    /// A peer gateway to pull missing objects from (repeatable).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// File holding the bearer token that every call must carry (and that is sent to peers).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate to verify peers with (peers are then reached over TLS).
    #[arg(long, value_name = "PEM")]
    peer_ca: Option<PathBuf>,
}

/// Resolves `HOST:PORT` (a name or an address) to the first address it names.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s} names no address"))
}

/// Checks `authorization: Bearer <token>` on every incoming call when a token is set.
#[derive(Clone)]
struct CheckToken {
    expected: Option<Arc<Vec<u8>>>,
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token: the file's first line, trimmed; empty is an error.
fn read_token(path: &PathBuf) -> Result<String, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    let t = s.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(format!("--token-file {} is empty", path.display()));
    }
    Ok(t)
}

fn read_file(path: &PathBuf, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
}

/// Keeps chunk-sized buffers (the IPC encoding of a chunk, gRPC message buffers) in the
/// malloc heap instead of a fresh mmap each, and the heap from being trimmed back to the
/// kernel after each: otherwise every 4 MiB chunk costs 1024 page faults and zeroed pages on
/// each side of a transfer (measured: about a sixth of a gateway's CPU time per GiB).
fn tune_malloc() {
    const KEEP: libc::c_int = 256 << 20;
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any
    // other thread exists, and both parameters are documented for any positive value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plasma_flight: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !args.listen.ip().is_loopback() && args.token_file.is_none() {
        return Err(format!(
            "refusing to listen on non-loopback {} without --token-file: anyone who can reach it could read and write the store",
            args.listen
        ));
    }
    let token = args.token_file.as_ref().map(read_token).transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(Identity::from_pem(
            read_file(c, "--tls-cert")?,
            read_file(k, "--tls-key")?,
        )),
        _ => None,
    };
    let peer_ca = args
        .peer_ca
        .as_ref()
        .map(|p| read_file(p, "--peer-ca"))
        .transpose()?;
    let add = AddToken::new(token.as_deref())?;

    let client = Client::connect(&args.socket).map_err(|e| e.to_string())?;
    let local = Local::new(client);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // Peer channels need the runtime (they spawn their connection tasks there).
    let r = rt.block_on(async {
        let peers = args
            .peers
            .iter()
            .map(|p| Peer::new(p, &add, peer_ca.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        serve(args, local, peers, token, tls).await
    });
    rt.shutdown_timeout(tuning::SHUTDOWN_GRACE);
    r
}

async fn serve(
    args: Args,
    local: Local,
    peers: Vec<Peer>,
    token: Option<String>,
    tls: Option<Identity>,
) -> Result<(), String> {
    let incoming = TcpIncoming::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
        .with_nodelay(Some(true));

    // Remote gets: register as the store's gateway and feed its misses to the pull engine.
    let (store_gone_tx, store_gone) = tokio::sync::oneshot::channel::<String>();
    let n_peers = peers.len();
    match local.client().register_gateway() {
        Ok(source) => {
            let puller = pull::Puller::new(local.clone(), Arc::new(pull::Broadcast::new(peers)));
            let handle = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("misses".into())
                .spawn(move || {
                    let e = pull::miss_loop(source, puller, handle);
                    let _ = store_gone_tx.send(e);
                })
                .map_err(|e| format!("cannot start the miss thread: {e}"))?;
            log::info!("registered as the store's gateway; {n_peers} peer(s)");
        }
        Err(e) => {
            // A store serves one gateway: a second one would serve Flight but never pull, which
            // is a configuration mistake better refused at once.
            return Err(format!("cannot register as the store's gateway: {e}"));
        }
    }

    let check = CheckToken {
        expected: token.map(|t| Arc::new(format!("Bearer {t}").into_bytes())),
    };
    let svc = FlightServiceServer::new(service::Service::new(local))
        .max_decoding_message_size(tuning::MAX_MESSAGE)
        .max_encoding_message_size(tuning::MAX_MESSAGE);
    let mut builder = Server::builder()
        .initial_stream_window_size(tuning::STREAM_WINDOW)
        .initial_connection_window_size(tuning::CONNECTION_WINDOW)
        .max_frame_size(tuning::MAX_FRAME)
        .http2_keepalive_interval(Some(tuning::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(tuning::KEEPALIVE_TIMEOUT));
    if let Some(id) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(id))
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let router = builder.add_service(InterceptedService::new(svc, check));
    log::info!(
        "serving Flight on {} for store {} ({}, {})",
        args.listen,
        args.socket.display(),
        if args.token_file.is_some() {
            "token required"
        } else {
            "no token"
        },
        if args.tls_cert.is_some() {
            "TLS"
        } else {
            "plaintext"
        },
    );

    // Resolves with the miss thread's error; never without a miss thread.
    let store_gone = async move {
        match store_gone.await {
            Ok(e) => e,
            Err(_) => futures::future::pending().await,
        }
    };
    let mut failure = None;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(format!("cannot handle SIGTERM: {e}"));
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            e = store_gone => failure = Some(format!("the store went away: {e}")),
        }
        let _ = stop_tx.send(true);
    };
    // Open connections get a short grace period to finish their calls (a connected client
    // that stays idle would otherwise hold the exit forever).
    let grace = async {
        let _ = stop_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(tuning::SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = router.serve_with_incoming_shutdown(incoming, shutdown) => {
            r.map_err(|e| format!("server: {e}"))?
        }
        _ = grace => log::info!("closing the connections still open"),
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("127.0.0.1:8815").unwrap().port(), 8815);
        assert!(parse_listen("localhost:9").unwrap().ip().is_loopback());
        assert!(parse_listen("[::1]:9").unwrap().ip().is_loopback());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("nonsense:port").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!constant_time_eq(b"", b"Bearer abc"));
    }

    #[test]
    fn interceptor_checks_the_header() {
        use tonic::service::Interceptor;
        let mut c = CheckToken {
            expected: Some(Arc::new(b"Bearer s3cret".to_vec())),
        };
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(c.call(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            c.call(bad).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            c.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut open = CheckToken { expected: None };
        assert!(open.call(Request::new(())).is_ok());
    }
}
