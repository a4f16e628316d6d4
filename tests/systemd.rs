//! Readiness notification for systemd (`Type=notify`, sd_notify(3)), tested the way systemd
//! sees it: the test binds the Unix datagram socket that systemd would, passes its path in
//! `NOTIFY_SOCKET`, starts the daemon and reads its datagrams.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_plasma_store");

/// Generous: the daemon sends READY=1 right after binding its socket.
const WAIT: Duration = Duration::from_secs(30);

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification datagram");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_the_socket_is_bound_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let socket = dir.path().join("plasma.sock");
    let mut child = Command::new(BIN)
        .args(["-m", "1000000", "-s"])
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = recv(&notify);
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready:?}");
    assert_eq!(
        lines[1],
        format!("STATUS=serving {}", socket.display()),
        "{ready:?}"
    );
    // Ready means ready: a client can connect as soon as READY=1 arrives.
    UnixStream::connect(&socket).expect("the store listens when it says READY=1");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(recv(&notify), "STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_unreachable_notify_socket_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plasma.sock");
    let child = Command::new(BIN)
        .args(["-m", "1000000", "-s"])
        .arg(&socket)
        .env("NOTIFY_SOCKET", dir.path().join("nobody-listens"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The store goes on serving; it connects once it has bound its socket.
    let client = plasma_store::client::Client::connect_with_retries(
        &socket,
        3000,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(client.capacity(), 1_000_000);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("cannot notify systemd"), "{log}");
}
