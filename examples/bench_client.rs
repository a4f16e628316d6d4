//! `bench_client`: the Rust workload driver of the benchmark (`bench/run.sh`).
//!
//! One process runs one workload against one store with this crate's blocking client and
//! prints one line of JSON on stdout. The same workloads exist in `bench/bench.py` for the
//! pyarrow 11 client; both drivers take the same arguments and report the same fields, so
//! the harness treats them alike. Because this client is cheap, its numbers show mostly the
//! daemon's own cost.
//!
//! ```text
//! bench_client WORKLOAD --socket PATH [--pid DAEMON_PID] [--n N] [--size BYTES] [--tag T]
//!              [--batch B] [--gap-us US] [--wait-go]
//! ```
//!
//! Workloads:
//! - `create-seal`: create an object of `--size` bytes, write it, seal it, drop the buffer.
//! - `create-and-seal`: one CreateAndSeal request per object.
//! - `get-release`: get an existing sealed object (timeout 0) and drop it (a Release).
//! - `contains`: ask whether an existing sealed object is there.
//! - `list`: list the whole store `--n` times (reports the object count too).
//! - `wake`: latency from a seal to the return of a get that another process (a child
//!   `wake-waiter` of this program) blocked on, `--n` times, `--gap-us` apart.
//! - `put`: create an object of `--size` bytes, copy a pre-touched buffer into it, seal it,
//!   release and delete it; `--n` times (the first into fresh memory if the store is fresh).
//! - `fill`: create `--n` sealed objects of `--size` bytes (CreateAndSeal, or batches of
//!   `--batch`); used to set the store up, and left in place.
//!
//! Ids are 20 bytes: the tag (8 bytes, little endian), a counter (8 bytes), then zeros;
//! `bench.py` builds them the same way. Objects a timed workload creates are deleted after
//! the timed part. With `--pid`, the daemon's CPU time (utime + stime from
//! `/proc/PID/stat`, in clock ticks) is read just before and after the timed part. With
//! `--wait-go`, the driver sets up, prints `ready`, and starts the timed part when a line
//! arrives on stdin (the harness uses it to start several clients at once).
//!
//! Output fields: `ops`, `seconds` (timed part), `cpu_ticks` and `cpu_ns` (the daemon's CPU
//! time over the timed part, from `/proc/PID/stat` and from the threads' `schedstat`; null
//! without `--pid`), plus per workload
//! `count` (list), `lat_ns` (wake, one per iteration) and `each_s` (put, one per put).

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plasma_store::client::{Client, ObjectId};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Parsed command line.
struct Opts {
    workload: String,
    socket: String,
    pid: Option<u32>,
    n: u64,
    size: u64,
    tag: u64,
    batch: u64,
    gap_us: u64,
    wait_go: bool,
}

fn parse_args() -> Res<Opts> {
    let mut args = std::env::args().skip(1);
    let workload = args
        .next()
        .ok_or("usage: bench_client WORKLOAD --socket PATH ...")?;
    let mut o = Opts {
        workload,
        socket: String::new(),
        pid: None,
        n: 10_000,
        size: 64,
        tag: 1,
        batch: 1,
        gap_us: 1000,
        wait_go: false,
    };
    while let Some(flag) = args.next() {
        if flag == "--wait-go" {
            o.wait_go = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--socket" => o.socket = value,
            "--pid" => o.pid = Some(value.parse()?),
            "--n" => o.n = value.parse()?,
            "--size" => o.size = value.parse()?,
            "--tag" => o.tag = value.parse()?,
            "--batch" => o.batch = value.parse::<u64>()?.max(1),
            "--gap-us" => o.gap_us = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if o.socket.is_empty() {
        return Err("--socket is required".into());
    }
    Ok(o)
}

/// The id of object `i` of the run tagged `tag`.
fn oid(tag: u64, i: u64) -> ObjectId {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&tag.to_le_bytes());
    b[8..16].copy_from_slice(&i.to_le_bytes());
    ObjectId(b)
}

/// The daemon's utime + stime in clock ticks, if a pid was given.
fn daemon_ticks(pid: Option<u32>) -> Res<Option<u64>> {
    let Some(pid) = pid else { return Ok(None) };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).ok_or("short /proc/PID/stat")?.parse()?;
    let stime: u64 = f.get(12).ok_or("short /proc/PID/stat")?.parse()?;
    Ok(Some(utime + stime))
}

/// The daemon's CPU time in nanoseconds, summed over its threads from
/// `/proc/PID/task/*/schedstat` (exact, where `/proc/PID/stat` counts 10 ms ticks).
fn daemon_ns(pid: Option<u32>) -> Res<Option<u64>> {
    let Some(pid) = pid else { return Ok(None) };
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read: skip it.
        let Ok(s) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let first = s.split_whitespace().next().ok_or("empty schedstat")?;
        total += first.parse::<u64>()?;
    }
    Ok(Some(total))
}

/// Nanoseconds on the realtime clock, which every process on the machine shares
/// (`time.time_ns()` in Python).
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// With `--wait-go`: says `ready` and waits for the go line.
fn wait_for_go(o: &Opts) -> Res<()> {
    if o.wait_go {
        println!("ready");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    Ok(())
}

/// Result of one timed part.
struct Timed {
    ops: u64,
    seconds: f64,
    cpu_ticks: Option<u64>,
    cpu_ns: Option<u64>,
    extra: String,
}

/// Runs `body` as the timed part: daemon CPU read around it, wall time inside.
fn timed(o: &Opts, ops: u64, body: impl FnOnce() -> Res<String>) -> Res<Timed> {
    wait_for_go(o)?;
    let (c0, n0) = (daemon_ticks(o.pid)?, daemon_ns(o.pid)?);
    let t0 = Instant::now();
    let extra = body()?;
    let seconds = t0.elapsed().as_secs_f64();
    let (c1, n1) = (daemon_ticks(o.pid)?, daemon_ns(o.pid)?);
    Ok(Timed {
        ops,
        seconds,
        cpu_ticks: c0.zip(c1).map(|(a, b)| b.saturating_sub(a)),
        cpu_ns: n0.zip(n1).map(|(a, b)| b.saturating_sub(a)),
        extra,
    })
}

/// Deletes the objects `0..n` of `tag` (untimed clean-up), in chunks.
fn delete_all(client: &Client, tag: u64, n: u64) -> Res<()> {
    let ids: Vec<ObjectId> = (0..n).map(|i| oid(tag, i)).collect();
    for chunk in ids.chunks(10_000) {
        client.delete(chunk)?;
    }
    Ok(())
}

fn create_seal(o: &Opts, client: &Client) -> Res<Timed> {
    let ids: Vec<ObjectId> = (0..o.n).map(|i| oid(o.tag, i)).collect();
    let payload = vec![0x5a_u8; o.size as usize];
    let t = timed(o, o.n, || {
        for &id in &ids {
            let mut buf = client.create(id, o.size, b"")?;
            buf.data_mut().copy_from_slice(&payload);
            drop(buf.seal()?);
        }
        Ok(String::new())
    })?;
    delete_all(client, o.tag, o.n)?;
    Ok(t)
}

fn create_and_seal(o: &Opts, client: &Client) -> Res<Timed> {
    let ids: Vec<ObjectId> = (0..o.n).map(|i| oid(o.tag, i)).collect();
    let payload = vec![0x5a_u8; o.size as usize];
    let t = timed(o, o.n, || {
        for &id in &ids {
            client.create_and_seal(id, &payload, b"")?;
        }
        Ok(String::new())
    })?;
    delete_all(client, o.tag, o.n)?;
    Ok(t)
}

/// Seals one object of `--size` bytes for the read workloads.
fn one_object(o: &Opts, client: &Client) -> Res<ObjectId> {
    let id = oid(o.tag, 0);
    client.create_and_seal(id, &vec![0x5a_u8; o.size as usize], b"")?;
    Ok(id)
}

fn get_release(o: &Opts, client: &Client) -> Res<Timed> {
    let id = one_object(o, client)?;
    let t = timed(o, o.n, || {
        for _ in 0..o.n {
            let got = client.get(&[id], 0)?;
            if got.first().is_none_or(|b| b.is_none()) {
                return Err("get did not find the object".into());
            }
        }
        Ok(String::new())
    })?;
    client.delete(&[id])?;
    Ok(t)
}

fn contains(o: &Opts, client: &Client) -> Res<Timed> {
    let id = one_object(o, client)?;
    let t = timed(o, o.n, || {
        for _ in 0..o.n {
            if !client.contains(id)? {
                return Err("contains said false".into());
            }
        }
        Ok(String::new())
    })?;
    client.delete(&[id])?;
    Ok(t)
}

fn list(o: &Opts, client: &Client) -> Res<Timed> {
    timed(o, o.n, || {
        let mut count = 0;
        for _ in 0..o.n {
            count = client.list()?.len();
        }
        Ok(format!(r#","count":{count}"#))
    })
}

fn fill(o: &Opts, client: &Client) -> Res<Timed> {
    let payload = vec![0x5a_u8; o.size as usize];
    timed(o, o.n, || {
        let mut i = 0;
        while i < o.n {
            let end = (i + o.batch).min(o.n);
            if o.batch == 1 {
                client.create_and_seal(oid(o.tag, i), &payload, b"")?;
            } else {
                let objects: Vec<(ObjectId, &[u8], &[u8])> = (i..end)
                    .map(|j| (oid(o.tag, j), payload.as_slice(), &b""[..]))
                    .collect();
                client.create_and_seal_batch(&objects)?;
            }
            i = end;
        }
        Ok(String::new())
    })
}

fn put(o: &Opts, client: &Client) -> Res<Timed> {
    // The source is written once here, so that copying from it costs no page faults.
    let src = vec![0xa5_u8; o.size as usize];
    let mut each = Vec::new();
    let t = timed(o, o.n, || {
        for i in 0..o.n {
            let id = oid(o.tag, i);
            let t0 = Instant::now();
            let mut buf = client.create(id, o.size, b"")?;
            buf.data_mut().copy_from_slice(&src);
            let sealed = buf.seal()?;
            each.push(t0.elapsed().as_secs_f64());
            drop(sealed);
            client.delete(&[id])?;
        }
        let list: Vec<String> = each.iter().map(|s| format!("{s:.6}")).collect();
        Ok(format!(r#","each_s":[{}]"#, list.join(",")))
    })?;
    Ok(t)
}

/// The sealer side of `wake`: for each id, creates it (unsealed), tells the waiter child to
/// get it, waits `--gap-us` after the child says it is about to block, then seals it. The
/// child answers with the realtime clock reading at which its get returned.
fn wake(o: &Opts, client: &Client) -> Res<Timed> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "wake-waiter",
            "--socket",
            &o.socket,
            "--tag",
            &o.tag.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().ok_or("no child stdin")?;
    let mut from_child = std::io::BufReader::new(child.stdout.take().ok_or("no child stdout")?);
    let mut line = String::new();
    from_child.read_line(&mut line)?; // "ready": connected
    let gap = Duration::from_micros(o.gap_us);
    let mut lat = Vec::with_capacity(o.n as usize);
    let t = timed(o, o.n, || {
        for i in 0..o.n {
            let id = oid(o.tag, i);
            let buf = client.create(id, 8, b"")?;
            writeln!(to_child, "{i}")?;
            to_child.flush()?;
            line.clear();
            from_child.read_line(&mut line)?; // "r": about to call get
            std::thread::sleep(gap);
            let sealed_at = now_ns();
            let sealed = buf.seal()?;
            line.clear();
            from_child.read_line(&mut line)?;
            let woke_at: u128 = line.trim().parse()?;
            lat.push(woke_at.saturating_sub(sealed_at));
            drop(sealed); // released after the wake, as bench.py does
        }
        let list: Vec<String> = lat.iter().map(|l| l.to_string()).collect();
        Ok(format!(r#","lat_ns":[{}]"#, list.join(",")))
    })?;
    drop(to_child);
    child.wait()?;
    delete_all(client, o.tag, o.n)?;
    Ok(t)
}

/// The waiter side of `wake` (a child process of `wake`).
fn wake_waiter(o: &Opts, client: &Client) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let i: u64 = line.trim().parse()?;
        let id = oid(o.tag, i);
        writeln!(out, "r")?;
        out.flush()?;
        let got = client.get(&[id], -1)?;
        let woke_at = now_ns();
        if got.first().is_none_or(|b| b.is_none()) {
            return Err("blocked get returned without the object".into());
        }
        drop(got);
        writeln!(out, "{woke_at}")?;
        out.flush()?;
    }
    Ok(())
}

fn run() -> Res<()> {
    let o = parse_args()?;
    let client = Client::connect(&o.socket)?;
    let t = match o.workload.as_str() {
        "create-seal" => create_seal(&o, &client)?,
        "create-and-seal" => create_and_seal(&o, &client)?,
        "get-release" => get_release(&o, &client)?,
        "contains" => contains(&o, &client)?,
        "list" => list(&o, &client)?,
        "fill" => fill(&o, &client)?,
        "put" => put(&o, &client)?,
        "wake" => wake(&o, &client)?,
        "wake-waiter" => return wake_waiter(&o, &client),
        w => return Err(format!("unknown workload {w}").into()),
    };
    let json = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |c| c.to_string());
    println!(
        r#"{{"ops":{},"seconds":{:.9},"cpu_ticks":{},"cpu_ns":{}{}}}"#,
        t.ops,
        t.seconds,
        json(t.cpu_ticks),
        json(t.cpu_ns),
        t.extra
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
