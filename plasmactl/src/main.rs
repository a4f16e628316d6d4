//! `plasmactl`: the Plasma store's admin command, for people at a terminal and for scripts.
//!
//! A client of the store's own protocol (through [`plasma_store::client::Client`]), so it
//! works with any store that speaks it. Objects travel through the shared memory: `put`
//! reads the file straight into the object's mapped buffer, `get` writes from the mapped
//! buffer; neither copies the object into the process's heap.
//!
//! Exit codes are part of the interface (see [`exit`]) so that scripts can tell a missing
//! object from a full store from a store that is not running.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plasma_store::client::{Client, Error, ObjectInfo};
use plasma_store::protocol::ObjectId;

/// Exit codes `plasmactl` uses; scripts may rely on them.
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// Any other failure (an I/O error, a broken connection, ...).
    pub const ERROR: u8 = 1;
    /// Bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// An object id that the store does not have (or has not sealed yet).
    pub const NOT_FOUND: u8 = 3;
    /// The store cannot make room for the object.
    pub const STORE_FULL: u8 = 4;
    /// No store is listening on the socket.
    pub const NO_STORE: u8 = 5;
    /// `put --id` of an id the store already has.
    pub const EXISTS: u8 = 6;
}

/// Objects at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_THRESHOLD: u64 = 16 << 20;

/// Bytes moved between a file and the mapped object per read or write call.
const CHUNK: usize = 4 << 20;

/// Administer a Plasma object store over its Unix socket.
///
/// Exit codes: 0 ok, 1 error, 2 usage, 3 object not found, 4 store full,
/// 5 no store on the socket, 6 object already exists.
#[derive(Parser, Debug)]
#[command(name = "plasmactl", version, about, long_about)]
struct Cli {
    /// Socket of the store
    #[arg(
        short,
        long,
        global = true,
        default_value = "/tmp/plasma",
        env = "PLASMA_SOCKET"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show capacity, memory in use, objects by state (and clients, with --metrics)
    Status {
        /// The store's metrics endpoint ([HOST:]PORT of its --metrics-listen), to show the
        /// clients and waiting gets too (the protocol has no request for them)
        #[arg(long, value_name = "[HOST:]PORT")]
        metrics: Option<String>,
    },
    /// List every object: id, sizes, reference count, age, state
    List {
        /// One JSON array of objects instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Write a sealed object's data to a file (or to stdout)
    Get {
        /// Object id, 40 hex digits
        id: String,
        /// File to write (default: standard output)
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Store a file as a new sealed object and print its id
    Put {
        /// File to read
        file: PathBuf,
        /// Object id, 40 hex digits (default: a random id)
        #[arg(long)]
        id: Option<String>,
        /// Metadata to store with the object
        #[arg(long, default_value = "")]
        metadata: String,
    },
    /// Delete objects (objects in use go when their last user releases them)
    Delete {
        /// Object ids, 40 hex digits each
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Evict unused objects until at least BYTES are freed; prints the bytes freed
    Evict {
        /// Bytes to free: a number, optionally with a unit (k, M, G, KiB, MiB, GiB)
        bytes: String,
    },
    /// Print seal and deletion notifications as they happen, until interrupted
    Watch,
}

/// A failure: what to print and which exit code to end with.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::new(exit::ERROR, e.to_string())
    }
}

/// Maps a client error to its message and exit code.
fn client_failure(e: Error) -> Failure {
    let code = match &e {
        Error::Connect { .. } => exit::NO_STORE,
        Error::ObjectNotFound(_) => exit::NOT_FOUND,
        Error::OutOfMemory(_) => exit::STORE_FULL,
        Error::ObjectExists(_) => exit::EXISTS,
        _ => exit::ERROR,
    };
    let message = match &e {
        Error::Connect { path, source } => {
            format!("no store is listening on {} ({source})", path.display())
        }
        Error::OutOfMemory(Some(id)) => format!("the store is full: no room for object {id}"),
        Error::ObjectExists(Some(id)) => format!("object {id} already exists"),
        _ => e.to_string(),
    };
    Failure::new(code, message)
}

type Result<T> = std::result::Result<T, Failure>;

fn parse_id(s: &str) -> Result<ObjectId> {
    let bad = || {
        Failure::new(
            exit::USAGE,
            format!("bad object id {s:?}: expected 40 hex digits"),
        )
    };
    ObjectId::from_hex(s.trim()).ok_or_else(bad)
}

/// A byte count with an optional unit.
fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(Failure::new(exit::USAGE, format!("bad size {s:?}"))),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Failure::new(exit::USAGE, format!("bad size {s:?}")))
}

/// A random object id (from the kernel's generator).
fn random_id() -> Result<ObjectId> {
    let mut id = [0u8; 20];
    File::open("/dev/urandom")?.read_exact(&mut id)?;
    Ok(ObjectId(id))
}

/// Connects without libplasma's retries: a store that is not there should be said at once.
fn connect(socket: &Path) -> Result<Client> {
    Client::connect_with_retries(socket, 0, Duration::ZERO).map_err(client_failure)
}

/// A progress bar for `len` bytes when it is worth one and someone can see it.
fn progress(len: u64, what: &str) -> Option<ProgressBar> {
    if len < PROGRESS_THRESHOLD || !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

fn state(info: &ObjectInfo) -> &'static str {
    if info.digest.is_some() {
        "sealed"
    } else {
        "created"
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `allocated bytes: N` from the store's debug report (both this store and the original
/// write it).
fn allocated_bytes(report: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("allocated bytes: "))
        .and_then(|n| n.trim().parse().ok())
}

/// Reads one scrape of the store's metrics page: the value of each unlabelled sample named
/// in `names`, in order (`None` where missing).
fn scrape(endpoint: &str, names: &[&str]) -> Result<Vec<Option<u64>>> {
    use std::net::{TcpStream, ToSocketAddrs};
    let fail = |e: String| Failure::new(exit::ERROR, format!("metrics at {endpoint}: {e}"));
    let endpoint_full = if endpoint.parse::<u16>().is_ok() {
        format!("127.0.0.1:{endpoint}")
    } else {
        endpoint.to_string()
    };
    let addr = endpoint_full
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: plasma\r\n\r\n")?;
    let mut page = String::new();
    conn.read_to_string(&mut page)
        .map_err(|e| fail(e.to_string()))?;
    if !page.starts_with("HTTP/1.1 200") {
        return Err(fail(page.lines().next().unwrap_or("no answer").to_string()));
    }
    Ok(names
        .iter()
        .map(|name| {
            page.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect())
}

/// Connections the store has accepted on `socket` and not closed, counted from the kernel's
/// table of Unix sockets (`/proc/net/unix`): an accepted connection carries the listening
/// socket's path, in the connected state. `None` where the table is not readable (or the
/// store runs in another network namespace, where none are found). The protocol has no
/// request for it; with `--metrics` the store's own figure is shown instead.
fn connected_clients(socket: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = std::fs::canonicalize(socket).unwrap_or_else(|_| socket.to_path_buf());
    let names = [socket.to_string_lossy(), path.to_string_lossy()];
    // Columns: Num RefCount Protocol Flags Type St Inode Path; St 03 is connected.
    let n = table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(5) == Some(&"03") && cols.get(7).is_some_and(|p| names.iter().any(|n| n == p))
        })
        .count();
    (n > 0).then_some(n as u64)
}

fn status(socket: &Path, metrics: Option<&str>) -> Result<()> {
    let client = connect(socket)?;
    let live = match metrics {
        Some(m) => Some(scrape(m, &["plasma_clients", "plasma_waiting_gets"])?),
        None => None,
    };
    let objects = client.list().map_err(client_failure)?;
    let report = client.debug_string().map_err(client_failure)?;
    let size = |o: &ObjectInfo| (o.data_size + o.metadata_size).max(0) as u64;
    let (mut created, mut created_bytes, mut sealed, mut sealed_bytes) = (0, 0u64, 0, 0u64);
    let (mut in_use, mut in_use_bytes) = (0, 0u64);
    for o in &objects {
        if o.digest.is_some() {
            sealed += 1;
            sealed_bytes += size(o);
        } else {
            created += 1;
            created_bytes += size(o);
        }
        if o.ref_count > 0 {
            in_use += 1;
            in_use_bytes += size(o);
        }
    }
    let capacity = client.capacity();
    let mut out = io::stdout().lock();
    writeln!(out, "socket:     {}", socket.display())?;
    writeln!(out, "capacity:   {capacity} bytes")?;
    match allocated_bytes(&report) {
        Some(used) => {
            let pct = if capacity > 0 {
                100.0 * used as f64 / capacity as f64
            } else {
                0.0
            };
            writeln!(out, "used:       {used} bytes ({pct:.1}%)")?
        }
        None => writeln!(out, "used:       unknown")?,
    }
    writeln!(
        out,
        "objects:    {} ({} bytes)",
        objects.len(),
        created_bytes + sealed_bytes
    )?;
    writeln!(out, "  sealed:   {sealed} ({sealed_bytes} bytes)")?;
    writeln!(
        out,
        "  created:  {created} ({created_bytes} bytes, not sealed yet)"
    )?;
    writeln!(
        out,
        "  in use:   {in_use} ({in_use_bytes} bytes referenced by clients)"
    )?;
    if let Some(live) = live {
        let show = |v: Option<u64>| v.map_or("unknown".to_string(), |n| n.to_string());
        // This command's own connection is one of the clients.
        writeln!(out, "clients:    {} (this one included)", show(live[0]))?;
        writeln!(out, "waiting gets: {}", show(live[1]))?;
    } else if let Some(n) = connected_clients(socket) {
        writeln!(out, "clients:    {n} (this one included)")?;
    }
    drop(client);
    Ok(())
}

fn list(socket: &Path, json: bool) -> Result<()> {
    let client = connect(socket)?;
    let mut objects = client.list().map_err(client_failure)?;
    objects.sort_by_key(|o| (o.create_time, o.object_id));
    let now = now_secs();
    let mut out = io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "id": o.object_id.hex(),
                    "data_size": o.data_size,
                    "metadata_size": o.metadata_size,
                    "ref_count": o.ref_count,
                    "create_time": o.create_time,
                    "age_seconds": (now - o.create_time).max(0),
                    "state": state(o),
                    "digest": o.digest.map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Failure::new(exit::ERROR, e.to_string()))?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:>12} {:>8} {:>4} {:>8} STATE",
        "ID", "DATA", "META", "REFS", "AGE"
    )?;
    for o in &objects {
        writeln!(
            out,
            "{:<40} {:>12} {:>8} {:>4} {:>7}s {}",
            o.object_id.hex(),
            o.data_size,
            o.metadata_size,
            o.ref_count,
            (now - o.create_time).max(0),
            state(o)
        )?;
    }
    Ok(())
}

fn get(socket: &Path, id: &str, output: Option<&Path>) -> Result<()> {
    let id = parse_id(id)?;
    let client = connect(socket)?;
    let mut found = client.get(&[id], 0).map_err(client_failure)?;
    let Some(object) = found.pop().flatten() else {
        let unsealed = client
            .list()
            .map_err(client_failure)?
            .iter()
            .any(|o| o.object_id == id);
        let why = if unsealed {
            "is not sealed yet"
        } else {
            "does not exist"
        };
        return Err(Failure::new(exit::NOT_FOUND, format!("object {id} {why}")));
    };
    let data = object.data();
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(File::create(path).map_err(|e| {
            Failure::new(
                exit::ERROR,
                format!("cannot create {}: {e}", path.display()),
            )
        })?),
        None => Box::new(io::stdout().lock()),
    };
    let bar = progress(data.len() as u64, "get");
    for chunk in data.chunks(CHUNK) {
        sink.write_all(chunk)?;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    sink.flush()?;
    if let Some(b) = bar {
        b.finish();
    }
    Ok(())
}

fn put(socket: &Path, file: &Path, id: Option<&str>, metadata: &str) -> Result<()> {
    let id = match id {
        Some(s) => parse_id(s)?,
        None => random_id()?,
    };
    let open =
        |e: io::Error| Failure::new(exit::ERROR, format!("cannot read {}: {e}", file.display()));
    let mut f = File::open(file).map_err(open)?;
    let len = f.metadata().map_err(open)?.len();
    let client = connect(socket)?;
    let mut buf = client
        .create(id, len, metadata.as_bytes())
        .map_err(client_failure)?;
    let bar = progress(len, "put");
    let mut filled = 0usize;
    let result = (|| -> io::Result<()> {
        for chunk in buf.data_mut().chunks_mut(CHUNK) {
            f.read_exact(chunk)?;
            filled += chunk.len();
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Unsealed objects of a client are aborted when it disconnects; say so explicitly.
        let _ = buf.abort();
        return Err(Failure::new(
            exit::ERROR,
            format!(
                "reading {} failed after {filled} of {len} bytes: {e}",
                file.display()
            ),
        ));
    }
    buf.seal().map_err(client_failure)?;
    if let Some(b) = bar {
        b.finish();
    }
    println!("{id}");
    Ok(())
}

fn delete(socket: &Path, ids: &[String]) -> Result<()> {
    let ids = ids
        .iter()
        .map(|s| parse_id(s))
        .collect::<Result<Vec<_>>>()?;
    let client = connect(socket)?;
    let present: std::collections::HashSet<ObjectId> = client
        .list()
        .map_err(client_failure)?
        .iter()
        .map(|o| o.object_id)
        .collect();
    client.delete(&ids).map_err(client_failure)?;
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !present.contains(id))
        .map(|id| id.hex())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            exit::NOT_FOUND,
            format!("no such object: {}", missing.join(", ")),
        ))
    }
}

fn evict(socket: &Path, bytes: &str) -> Result<()> {
    let n = parse_bytes(bytes)?;
    let client = connect(socket)?;
    let freed = client.evict(n).map_err(client_failure)?;
    println!("{freed}");
    Ok(())
}

fn watch(socket: &Path) -> Result<()> {
    let client = connect(socket)?;
    let mut sub = client.subscribe().map_err(client_failure)?;
    let mut out = io::stdout().lock();
    while let Some(n) = sub.next_notification().map_err(client_failure)? {
        let line = if n.is_deletion {
            format!("deleted {}", n.object_id)
        } else {
            format!(
                "sealed {} data_size={} metadata_size={}",
                n.object_id, n.data_size, n.metadata_size
            )
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            // The reader went away (`plasmactl watch | head`): that is the end, not an error.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    Err(Failure::new(exit::ERROR, "the store closed the connection"))
}

fn run(cli: Cli) -> Result<()> {
    let s = cli.socket.as_path();
    match cli.command {
        Command::Status { metrics } => status(s, metrics.as_deref()),
        Command::List { json } => list(s, json),
        Command::Get { id, output } => get(s, &id, output.as_deref()),
        Command::Put { file, id, metadata } => put(s, &file, id.as_deref(), &metadata),
        Command::Delete { ids } => delete(s, &ids),
        Command::Evict { bytes } => evict(s, &bytes),
        Command::Watch => watch(s),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("plasmactl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sizes() {
        let id = parse_id(&"0a".repeat(20)).unwrap();
        assert_eq!(id, ObjectId([10; 20]));
        assert_eq!(parse_id("abc").unwrap_err().code, exit::USAGE);
        assert_eq!(parse_id(&"zz".repeat(20)).unwrap_err().code, exit::USAGE);
        assert_eq!(parse_bytes("4KiB").unwrap(), 4096);
        assert_eq!(parse_bytes("10").unwrap(), 10);
        assert_eq!(parse_bytes("1x").unwrap_err().code, exit::USAGE);
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
