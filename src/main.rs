//! `plasma_store`: the daemon's command line, logging and exit codes.
//!
//! The flags are the original `plasma-store-server`'s (`-m BYTES -s SOCKET [-d DIR] [-h]
//! [-e ENDPOINT]`, also in gflags' `-m=…`, `--m …` and `--m=…` spellings), with defaults so
//! that `plasma_store` alone serves, sizes with units, `--help` and `--version`. The parser
//! is written out here because no argument crate speaks gflags' dialect (where `-h` means huge
//! pages, not help).

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info};

use plasma_store::server::{Server, ServerConfig};
use plasma_store::shm::SegmentOptions;
use plasma_store::store::StoreConfig;

const DEFAULT_SOCKET: &str = "/tmp/plasma";
const DEFAULT_MEMORY: u64 = 1 << 30;

const USAGE: &str = "\
usage: plasma_store [-m BYTES] [-s SOCKET] [-d DIR] [-h] [-e ENDPOINT]

A Plasma object store: processes on this machine share immutable objects through shared
memory. Wire-compatible with Apache Arrow's plasma-store-server (pyarrow <= 11 clients).

  -m BYTES     capacity: the most bytes objects may take (default 1GiB). Plain bytes, or with
               a unit: k, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)
  -s SOCKET    path of the Unix socket to listen on (default /tmp/plasma)
  -d DIR       create the shared memory as an unlinked file in DIR (default: anonymous memfd)
  -h           back the shared memory with huge pages
  -e ENDPOINT  where evicted objects go instead of being deleted, restored on get:
               file:///DIR    spill to files in DIR (see the README: the spill tier)
               hashtable://X  keep them in the store's own memory (the original's test store)
  --spill-limit BYTES  most bytes the file:// spill tier may write (default: no limit)
  --no-prefault  leave shared memory to be allocated on first touch (by default the store
               makes it resident in the background, while idle, after start-up)

Access (the shared memory is reachable only through fds the store hands to its clients):
  --socket-mode MODE             permissions of the socket file, octal (default 600: only
                                 the store's user may connect; 660 or 666 widen it)
  --allow-uid UID[,UID...]       serve only peers with these user ids (SO_PEERCRED); others
                                 are refused and logged

Limits (the store never lets one client cost the others):
  --max-connections N            most clients at once (default 4096)
  --max-request-bytes BYTES      largest request accepted; a connection that announces more
                                 is closed (default: the capacity + 1MiB, since a
                                 create-and-seal carries its object inline)
  --max-pending-gets N           gets one client may have waiting; more are answered at once
                                 with what is available (default 1024)
  --max-queued-bytes BYTES       replies queued for a client that does not read them before
                                 the store stops reading its requests (default 64MiB)
  --max-notification-bytes BYTES notifications queued for a subscriber that does not read
                                 them before its subscription is dropped (default 64MiB)
  --help       print this help
  --version    print the version

Logging: RUST_LOG=debug|info|warn|error (default info). SIGINT or SIGTERM stop the store and
remove its socket.";

#[derive(Debug)]
struct Args {
    memory: u64,
    socket: PathBuf,
    directory: Option<PathBuf>,
    huge_pages: bool,
    external_store: Option<String>,
    max_connections: Option<usize>,
    max_queued_bytes: Option<u64>,
    max_notification_bytes: Option<u64>,
    spill_limit: Option<u64>,
    socket_mode: Option<u32>,
    no_prefault: bool,
    max_request_bytes: Option<u64>,
    max_pending_gets: Option<usize>,
    allowed_uids: Option<Vec<u32>>,
}

enum Parsed {
    Run(Box<Args>),
    Help,
    Version,
}

/// Parses a size: digits, optionally followed by a unit.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("-m takes a size in bytes, like 1000000000 or 4GiB; got {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "-m: unknown unit {u:?} (use k, M, G, T, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("-m: {s} is too large"))?;
    if bytes == 0 {
        return Err("-m: the capacity must be at least 1 byte".into());
    }
    Ok(bytes)
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args {
        memory: DEFAULT_MEMORY,
        socket: PathBuf::from(DEFAULT_SOCKET),
        directory: None,
        huge_pages: false,
        external_store: None,
        max_connections: None,
        max_queued_bytes: None,
        max_notification_bytes: None,
        spill_limit: None,
        socket_mode: None,
        no_prefault: false,
        max_request_bytes: None,
        max_pending_gets: None,
        allowed_uids: None,
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if !arg.starts_with('-') || arg == "-" {
            // The original ignores positional arguments; saying so is kinder.
            return Err(format!("unexpected argument {arg:?}"));
        }
        let flag = arg.trim_start_matches('-');
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("-{name} needs {what}"))
        };
        match name {
            "help" => return Ok(Parsed::Help),
            "version" => return Ok(Parsed::Version),
            "m" | "memory" => args.memory = parse_size(&value("a size in bytes")?)?,
            "s" | "socket" => args.socket = PathBuf::from(value("a socket path")?),
            "d" | "directory" => args.directory = Some(PathBuf::from(value("a directory")?)),
            "e" | "external-store" => args.external_store = Some(value("an endpoint")?),
            "h" | "hugepages" => {
                args.huge_pages = match inline.as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(v) => return Err(format!("-h takes no value (got {v:?})")),
                }
            }
            "noh" | "nohugepages" => args.huge_pages = false,
            "no-prefault" => args.no_prefault = true,
            "max-connections" => {
                let v = value("a number")?;
                args.max_connections = Some(
                    v.parse()
                        .map_err(|_| format!("--max-connections: bad number {v:?}"))?,
                );
            }
            "socket-mode" => {
                let v = value("an octal mode")?;
                let mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--socket-mode: bad octal mode {v:?}"))?;
                args.socket_mode = Some(mode);
            }
            "allow-uid" => {
                let v = value("user ids")?;
                let uids = v
                    .split(',')
                    .map(|u| u.trim().parse::<u32>())
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|_| format!("--allow-uid: bad user id list {v:?}"))?;
                args.allowed_uids.get_or_insert_with(Vec::new).extend(uids);
            }
            "spill-limit" => args.spill_limit = Some(parse_size(&value("a size")?)?),
            "max-request-bytes" => args.max_request_bytes = Some(parse_size(&value("a size")?)?),
            "max-pending-gets" => {
                let v = value("a number")?;
                args.max_pending_gets = Some(
                    v.parse()
                        .map_err(|_| format!("--max-pending-gets: bad number {v:?}"))?,
                );
            }
            "max-queued-bytes" => args.max_queued_bytes = Some(parse_size(&value("a size")?)?),
            "max-notification-bytes" => {
                args.max_notification_bytes = Some(parse_size(&value("a size")?)?)
            }
            _ => return Err(format!("unknown flag {arg:?}")),
        }
    }
    let len = args.socket.as_os_str().len();
    if len == 0 || len > 107 {
        return Err(format!(
            "the socket path must be 1 to 107 bytes long (got {len})"
        ));
    }
    Ok(Parsed::Run(Box::new(args)))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("plasma_store {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("plasma_store: {e} (see plasma_store --help)");
            return ExitCode::from(1);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut store = StoreConfig::new(args.memory);
    store.segment = SegmentOptions {
        directory: args.directory.clone(),
        huge_pages: args.huge_pages,
    };
    store.external_store = args.external_store.clone();
    if let Some(n) = args.max_pending_gets {
        store.max_pending_gets = n;
    }
    store.spill_limit = args.spill_limit;
    let mut config = ServerConfig::new(args.socket.clone(), store);
    if let Some(m) = args.socket_mode {
        config.socket_mode = m;
    }
    config.allowed_uids = args.allowed_uids.clone();
    config.prefault = !args.no_prefault;
    if let Some(n) = args.max_connections {
        config.max_connections = n;
    }
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    config.max_request_bytes = args.max_request_bytes.map(to_usize);
    if let Some(n) = args.max_queued_bytes {
        config.max_queued_bytes = to_usize(n);
    }
    if let Some(n) = args.max_notification_bytes {
        config.max_notification_bytes = to_usize(n);
    }
    let mut server = match Server::new(config) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start the store on {}: {e}", args.socket.display());
            return ExitCode::from(1);
        }
    };
    info!(
        "plasma_store {} serving {}: capacity {} bytes, shared memory in {}{}",
        env!("CARGO_PKG_VERSION"),
        args.socket.display(),
        args.memory,
        args.directory
            .as_ref()
            .map_or("an anonymous memfd".to_string(), |d| d
                .display()
                .to_string()),
        if args.huge_pages { ", huge pages" } else { "" }
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("the event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_size("1000000000"), Ok(1_000_000_000));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1e9").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn gflags_spellings_and_defaults() {
        let Ok(Parsed::Run(a)) = parse(&["--m=1000", "-s=/tmp/x", "-h"]) else {
            panic!("parse failed");
        };
        assert_eq!(
            (a.memory, a.socket, a.huge_pages),
            (1000, "/tmp/x".into(), true)
        );
        let Ok(Parsed::Run(a)) = parse(&[]) else {
            panic!("parse failed");
        };
        assert_eq!(
            (a.memory, a.socket.to_str()),
            (DEFAULT_MEMORY, Some(DEFAULT_SOCKET))
        );
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["--version"]), Ok(Parsed::Version)));
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["-m"]).is_err());
        assert!(parse(&["-s", &"a".repeat(108)]).is_err());
    }
}
