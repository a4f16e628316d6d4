//! `plasma_store`: the daemon's command line, logging and exit codes, as a library function
//! ([`run`]) so that the binary (`src/main.rs`) and the Python package's `plasma_store`
//! console script run the same daemon.
//!
//! The flags are the original `plasma-store-server`'s (`-m BYTES -s SOCKET [-d DIR] [-h]
//! [-e ENDPOINT]`, also in gflags' `-m=…`, `--m …` and `--m=…` spellings), with defaults so
//! that `plasma_store` alone serves, sizes with units, `--help` and `--version`. The parser
//! is written out here because no argument crate speaks gflags' dialect (where `-h` means huge
//! pages, not help).

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info, warn};
use sd_notify::NotifyState;

use crate::persist::PersistConfig;
use crate::server::{Server, ServerConfig};
use crate::store::StoreConfig;

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
  --persist DIR  keep the shared memory (DIR/segment) and a record of the sealed objects in
               DIR, so that a store restarted with the same DIR has every object whose seal
               was acknowledged, however the last one stopped (see the README: restarts that
               lose nothing); objects spilled with -e file:// into DIR survive too. Not
               with -d or -h
  --persist-verify  check every recovered object's digest before serving (default: on its
               first get); objects whose bytes do not match are dropped
  --persist-sync  write the segment and each record to storage before acknowledging a seal:
               survives power loss when DIR is on a disk (slow: two fdatasyncs per seal)
  --no-prefault  leave shared memory to be allocated on first touch (by default the store
               makes it resident in the background, while idle, after start-up)

When the store is full (see the README):
  --create-wait MS       a create that does not fit even after eviction waits up to MS
                         milliseconds for memory to free, in arrival order (default 0: fail
                         at once with PlasmaStoreFull, as the original)
  --fallback-dir DIR     objects shared memory cannot hold (after eviction and waiting) go
                         to disk-backed segments in DIR (unlinked files; default: none)
  --fallback-limit BYTES most bytes of objects in the fallback tier (default: what the disk
                         holds)

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
Monitoring:
  --metrics-listen [HOST:]PORT   serve Prometheus metrics at http://HOST:PORT/metrics (HOST
                                 defaults to 127.0.0.1: loopback only; 0.0.0.0 or [::]
                                 for every interface)
  --help       print this help
  --version    print the version

Logging: RUST_LOG=debug|info|warn|error (default info). SIGINT or SIGTERM stop the store and
remove its socket.";

enum Parsed {
    Run(Box<ServerConfig>),
    Help,
    Version,
}

/// Parses a size for `flag`: digits, optionally followed by a unit.
fn parse_size(flag: &str, s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{flag} takes a size in bytes, like 1000000000 or 4GiB; got {s:?}"))?;
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
                "{flag}: unknown unit {u:?} (use k, M, G, T, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{flag}: {s} is too large"))?;
    if bytes == 0 {
        return Err(format!("{flag}: the size must be at least 1 byte"));
    }
    Ok(bytes)
}

/// A size that sizes an in-memory buffer.
fn parse_buffer_size(flag: &str, s: &str) -> Result<usize, String> {
    parse_size(flag, s).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// `PORT` (on 127.0.0.1) or `HOST:PORT` (`[::1]:PORT` for IPv6, or a name).
fn parse_listen(flag: &str, s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
    let bad = || format!("{flag} takes PORT or HOST:PORT; got {s:?}");
    if let Ok(port) = s.trim().parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.trim()
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", bad()))?
        .next()
        .ok_or_else(bad)
}

fn parse_count(flag: &str, s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{flag}: bad number {s:?}"))
}

/// Parses the command line straight into the daemon's configuration.
fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut c = ServerConfig::new(
        PathBuf::from(DEFAULT_SOCKET),
        StoreConfig::new(DEFAULT_MEMORY),
    );
    let mut it = argv.into_iter();
    // --persist-verify and --persist-sync, applied once --persist is known.
    let mut persist_flags = (false, false);
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
        let flag = if name.len() == 1 {
            format!("-{name}")
        } else {
            format!("--{name}")
        };
        match name {
            "help" => return Ok(Parsed::Help),
            "version" => return Ok(Parsed::Version),
            "m" | "memory" => c.store.capacity = parse_size(&flag, &value("a size in bytes")?)?,
            "s" | "socket" => c.socket = PathBuf::from(value("a socket path")?),
            "d" | "directory" => {
                c.store.segment.directory = Some(PathBuf::from(value("a directory")?))
            }
            "e" | "external-store" => c.store.external_store = Some(value("an endpoint")?),
            "h" | "hugepages" => {
                c.store.segment.huge_pages = match inline.as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(v) => return Err(format!("-h takes no value (got {v:?})")),
                }
            }
            "noh" | "nohugepages" => c.store.segment.huge_pages = false,
            "no-prefault" => c.prefault = false,
            "persist" => c.store.persist = Some(PersistConfig::new(value("a directory")?)),
            "persist-verify" => persist_flags.0 = true,
            "persist-sync" => persist_flags.1 = true,
            "socket-mode" => {
                let v = value("an octal mode")?;
                c.socket_mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--socket-mode: bad octal mode {v:?}"))?;
            }
            "allow-uid" => {
                let v = value("user ids")?;
                let uids = v
                    .split(',')
                    .map(|u| u.trim().parse::<u32>())
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|_| format!("--allow-uid: bad user id list {v:?}"))?;
                c.allowed_uids.get_or_insert_with(Vec::new).extend(uids);
            }
            "create-wait" => {
                let ms = parse_count(&flag, &value("milliseconds")?)?;
                c.store.create_wait = std::time::Duration::from_millis(ms as u64);
            }
            "fallback-dir" => c.store.fallback_dir = Some(PathBuf::from(value("a directory")?)),
            "fallback-limit" => {
                c.store.fallback_limit = Some(parse_size(&flag, &value("a size")?)?)
            }
            "spill-limit" => c.store.spill_limit = Some(parse_size(&flag, &value("a size")?)?),
            "metrics-listen" => {
                c.metrics_listen = Some(parse_listen(&flag, &value("[HOST:]PORT")?)?)
            }
            "max-connections" => c.max_connections = parse_count(&flag, &value("a number")?)?,
            "max-pending-gets" => {
                c.store.max_pending_gets = parse_count(&flag, &value("a number")?)?
            }
            "max-request-bytes" => {
                c.max_request_bytes = Some(parse_buffer_size(&flag, &value("a size")?)?)
            }
            "max-queued-bytes" => c.max_queued_bytes = parse_buffer_size(&flag, &value("a size")?)?,
            "max-notification-bytes" => {
                c.max_notification_bytes = parse_buffer_size(&flag, &value("a size")?)?
            }
            _ => return Err(format!("unknown flag {arg:?}")),
        }
    }
    match c.store.persist.as_mut() {
        Some(p) => (p.verify, p.sync) = persist_flags,
        None if persist_flags != (false, false) => {
            return Err("--persist-verify and --persist-sync need --persist DIR".into());
        }
        None => {}
    }
    if c.store.persist.is_some()
        && (c.store.segment.directory.is_some() || c.store.segment.huge_pages)
    {
        return Err(
            "--persist DIR keeps the shared memory in DIR: it cannot be combined with -d or -h"
                .into(),
        );
    }
    let len = c.socket.as_os_str().len();
    if len == 0 || len > 107 {
        return Err(format!(
            "the socket path must be 1 to 107 bytes long (got {len})"
        ));
    }
    Ok(Parsed::Run(Box::new(c)))
}

/// Runs the daemon with the command-line arguments `args` (without the program name): parses
/// them, serves until SIGINT or SIGTERM, and returns the exit code (0 after a clean stop or
/// `--help`/`--version`, 1 for bad arguments or a store that cannot start). Initializes
/// `env_logger` (RUST_LOG, default info), so call it once per process.
pub fn run(args: impl IntoIterator<Item = String>) -> ExitCode {
    let config = match parse_args(args) {
        Ok(Parsed::Run(c)) => c,
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

    let (socket, capacity) = (config.socket.clone(), config.store.capacity);
    let memory = match (&config.store.segment.directory, &config.store.persist) {
        (_, Some(p)) => format!(
            "{} (persistent)",
            p.dir.join(crate::persist::SEGMENT_FILE).display()
        ),
        (None, None) => "an anonymous memfd".to_string(),
        (Some(d), None) => d.display().to_string(),
    };
    let huge = if config.store.segment.huge_pages {
        ", huge pages"
    } else {
        ""
    };
    let mut server = match Server::new(*config) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start the store on {}: {e}", socket.display());
            return ExitCode::from(1);
        }
    };
    info!(
        "plasma_store {} serving {}: capacity {capacity} bytes, shared memory in {memory}{huge}",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
    );
    if let Some(addr) = server.metrics_addr() {
        info!("metrics at http://{addr}/metrics");
    }
    // Under systemd (Type=notify): the socket is bound, so clients can connect from now on.
    // Without NOTIFY_SOCKET in the environment this does nothing.
    let status = format!("serving {}", socket.display());
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let result = server.run();
    notify_systemd(&[NotifyState::Stopping]);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("the event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Tells the service manager about a state change (sd_notify(3)); a failure is only logged.
fn notify_systemd(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
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
        assert_eq!(parse_size("-m", "1000000000"), Ok(1_000_000_000));
        assert_eq!(parse_size("-m", "4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("-m", "100k"), Ok(100_000));
        assert_eq!(parse_size("-m", "2MB"), Ok(2_000_000));
        assert!(parse_size("-m", "0").is_err());
        assert!(parse_size("-m", "-1").is_err());
        assert!(parse_size("-m", "1e9").is_err());
        assert!(parse_size("-m", "99999999999TiB").is_err());
        assert!(
            parse_size("--spill-limit", "x")
                .unwrap_err()
                .starts_with("--spill-limit")
        );
    }

    #[test]
    fn gflags_spellings_and_defaults() {
        let Ok(Parsed::Run(a)) = parse(&["--m=1000", "-s=/tmp/x", "-h"]) else {
            panic!("parse failed");
        };
        assert_eq!(
            (a.store.capacity, a.socket, a.store.segment.huge_pages),
            (1000, "/tmp/x".into(), true)
        );
        let Ok(Parsed::Run(a)) = parse(&[]) else {
            panic!("parse failed");
        };
        assert_eq!(
            (a.store.capacity, a.socket.to_str()),
            (DEFAULT_MEMORY, Some(DEFAULT_SOCKET))
        );
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["--version"]), Ok(Parsed::Version)));
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["-m"]).is_err());
        assert!(parse(&["-s", &"a".repeat(108)]).is_err());
        let Ok(Parsed::Run(a)) = parse(&["--metrics-listen", "9100"]) else {
            panic!("parse failed");
        };
        assert_eq!(a.metrics_listen, Some(([127, 0, 0, 1], 9100).into()));
        let Ok(Parsed::Run(a)) = parse(&["--metrics-listen=0.0.0.0:1"]) else {
            panic!("parse failed");
        };
        assert_eq!(a.metrics_listen, Some(([0, 0, 0, 0], 1).into()));
        assert!(parse(&["--metrics-listen", "x:y"]).is_err());
    }

    #[test]
    fn persist_flags() {
        let Ok(Parsed::Run(a)) = parse(&["--persist-sync", "--persist", "/tmp/p"]) else {
            panic!("parse failed");
        };
        let p = a.store.persist.expect("persist");
        assert_eq!(
            (p.dir.to_str(), p.verify, p.sync),
            (Some("/tmp/p"), false, true)
        );
        assert!(parse(&["--persist-verify"]).is_err());
        assert!(parse(&["--persist", "/tmp/p", "-d", "/dev/shm"]).is_err());
        assert!(parse(&["--persist", "/tmp/p", "-h"]).is_err());
    }
}
